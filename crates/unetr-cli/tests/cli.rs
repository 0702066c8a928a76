//! The `unetr` binary as a user runs it: every command with good and bad inputs. Each bad case asserts the
//! exit code (a clean failure, never a crash or a signal), a message naming the problem, and that no input
//! or earlier output changed (a hash of every file before and after).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unetr"));
    c.env("RUST_LOG", "warn");
    c
}

fn crafted(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crafted").join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("unetr-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(c: &mut Command) -> Output {
    c.output().expect("the unetr binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(c: &mut Command) -> Output {
    let o = run(c);
    assert!(o.status.success(), "expected success: {c:?}\n{}", text(&o));
    o
}

/// A clean failure (exit code 1, or 2 for a malformed command line; not a signal or a panic's 101) whose
/// message holds every `want`.
fn fails(c: &mut Command, want: &[&str]) -> String {
    let o = run(c);
    let t = text(&o);
    assert!(matches!(o.status.code(), Some(1 | 2)), "expected a clean error exit: {c:?}\n{t}");
    assert!(!t.contains("panicked"), "a panic is not a clean error: {c:?}\n{t}");
    for w in want {
        assert!(t.contains(w), "the message should name {w:?}: {c:?}\n{t}");
    }
    t
}

/// Every file under `dir` (recursively) and a hash of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.is_file() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap().hash(&mut h);
            out.insert(p, h.finish());
        }
    }
    out
}

/// A tiny training config (seconds per run); the pipeline resamples (a no-op for the phantoms' own
/// spacing) so that the checkpoint exercises Spacing on other inputs.
const TINY: &str = r#"
[data]
phantom_cases = 5
phantom_size = [32, 32, 16]
[transforms]
pixdim = [2.0, 2.0, 2.5]
roi = [32, 32, 16]
num_samples = 1
crop_foreground = false
flip_prob = 0.0
rotate90_prob = 0.0
[model]
feature_size = 2
hidden_size = 16
mlp_dim = 16
num_heads = 2
num_layers = 4
[optim]
steps = 2
warmup_steps = 1
[validation]
every = 2
sw_batch = 2
[output]
log_every = 100
progress = false
"#;

struct Trained {
    root: PathBuf,
    config: PathBuf,
    run: PathBuf,
}

/// One trained run shared by the tests (trained once, through the binary).
fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let root = tmp("trained");
        let config = root.join("tiny.toml");
        std::fs::write(&config, TINY).unwrap();
        let run = root.join("run");
        ok(bin().args(["train", "--config"]).arg(&config).arg("--out").arg(&run));
        for f in ["best/model.safetensors", "best/state.json", "checkpoint/state.json", "log.jsonl", "phantom/dataset.json"] {
            assert!(run.join(f).is_file(), "{f}");
        }
        Trained { root, config, run }
    })
}

fn phantom_image(t: &Trained, i: usize) -> PathBuf {
    t.run.join(format!("phantom/imagesTr/phantom_{i:03}.nii.gz"))
}

#[test]
fn train_refuses_a_folder_holding_a_run_and_resumes_or_overwrites_when_asked() {
    let t = trained();
    let before = snapshot(&t.run);
    fails(bin().args(["train", "--config"]).arg(&t.config).arg("--out").arg(&t.run), &["holds a training run", "--resume", "--overwrite", "checkpoint"]);
    assert_eq!(snapshot(&t.run), before, "a refused run changed the folder");
    // A changed phantom configuration is not silently served by the old phantom folder.
    fails(bin().args(["train", "--resume", "--steps", "3", "--set", "data.phantom_cases=6", "--config"]).arg(&t.config).arg("--out").arg(&t.run), &["phantom", "--overwrite"]);
    assert_eq!(snapshot(&t.run), before);
    // --resume and --overwrite work (on a copy of the run).
    let d = tmp("resume");
    let run = d.join("run");
    ok(bin().args(["train", "--config"]).arg(&t.config).arg("--out").arg(&run));
    ok(bin().args(["train", "--resume", "--steps", "4", "--config"]).arg(&t.config).arg("--out").arg(&run));
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4, "{log}");
    ok(bin().args(["train", "--overwrite", "--config"]).arg(&t.config).arg("--out").arg(&run));
    assert_eq!(std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().count(), 2);
    fails(bin().args(["train", "--resume", "--overwrite", "--config"]).arg(&t.config).arg("--out").arg(&run), &["--overwrite"]);
    let empty = d.join("empty");
    fails(bin().args(["train", "--resume", "--config"]).arg(&t.config).arg("--out").arg(&empty), &["no checkpoint"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn config_fields_are_validated_at_load_naming_the_field() {
    let t = trained();
    let before = snapshot(&t.root);
    let out = t.root.join("never");
    for (set, want) in [
        ("transforms.intensity_scale=-0.1", "transforms.intensity_scale"),
        ("transforms.intensity_shift=-1", "transforms.intensity_shift"),
        ("model.dropout_rate=1.0", "dropout_rate"),
        ("transforms.roi=[30,32,16]", "divisible by patch_size"),
        ("validation.overlap=-1", "validation.overlap"),
        ("optim.steps=0", "optim.steps"),
        ("optim.adamw.lr=-1", "optim.adamw.lr"),
        ("transforms.num_samples=0", "transforms.num_samples"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("transforms.flip_prob=2", "transforms.flip_prob"),
        ("memory_limit=\"12 XB\"", "memory limit"),
        ("device=\"tpu\"", "tpu"),
        ("optim.nonsense=1", "nonsense"),
    ] {
        fails(bin().args(["train", "--set", set, "--config"]).arg(&t.config).arg("--out").arg(&out), &[want]);
    }
    assert!(!out.exists(), "nothing is written for a bad config");
    std::fs::write(t.root.join("garbage.toml"), [0xff, 0xfe, 0x00, 0x12]).unwrap();
    fails(bin().args(["train", "--config"]).arg(t.root.join("garbage.toml")).arg("--out").arg(&out), &["garbage.toml"]);
    std::fs::remove_file(t.root.join("garbage.toml")).unwrap();
    fails(bin().args(["train", "--config"]).arg(t.root.join("missing.toml")), &["missing.toml"]);
    // Started by a launcher as one of several ranks: needs the NCCL build (this test's build has none).
    if !cfg!(feature = "nccl") {
        fails(bin().args(["train", "--config"]).arg(&t.config).arg("--out").arg(&out).env("RANK", "1").env("WORLD_SIZE", "2").env("LOCAL_RANK", "1"), &["torchrun", "rank 1 of 2", "--features nccl"]);
        fails(bin().args(["train", "--config"]).arg(&t.config).arg("--out").arg(&out).env("RANK", "3").env("WORLD_SIZE", "2"), &["rank 3 of world size 2"]);
    }
    assert!(!out.exists());
    assert_eq!(snapshot(&t.root), before);
}

#[test]
fn infer_never_writes_over_inputs_or_earlier_outputs() {
    let t = trained();
    let ck = t.run.join("best");
    let d = tmp("infer");
    let scans = d.join("scans");
    std::fs::create_dir_all(scans.join("a")).unwrap();
    std::fs::create_dir_all(scans.join("b")).unwrap();
    std::fs::copy(phantom_image(t, 0), scans.join("a/img.nii.gz")).unwrap();
    std::fs::copy(phantom_image(t, 1), scans.join("b/img.nii.gz")).unwrap();
    std::fs::copy(phantom_image(t, 2), scans.join("X.NII.GZ")).unwrap();
    let before = snapshot(&scans);
    // Output folder = input folder.
    fails(bin().args(["infer", "--checkpoint"]).arg(&ck).arg("--input").arg(&scans).arg("--output").arg(&scans), &["input folder"]);
    // An output path that is an input (the output folder holds the same file names).
    fails(bin().args(["infer", "--checkpoint"]).arg(&ck).arg("--input").arg(scans.join("a/img.nii.gz")).arg("--output").arg(scans.join("a")), &["is an input", "img.nii.gz"]);
    assert_eq!(snapshot(&scans), before);
    // Same file names in two folders of a datalist: one output each.
    let dl = d.join("list.json");
    std::fs::write(&dl, r#"{"labels": {"0": "bg", "1": "a"}, "test": ["scans/a/img.nii.gz", "scans/b/img.nii.gz"]}"#).unwrap();
    let out = d.join("out");
    ok(bin().args(["infer", "--checkpoint"]).arg(&ck).arg("--input").arg(&dl).arg("--output").arg(&out));
    assert!(out.join("a_img.nii.gz").is_file() && out.join("b_img.nii.gz").is_file(), "{:?}", snapshot(&out).keys());
    // An existing prediction is not replaced without --overwrite; with it, it is.
    let outs = snapshot(&out);
    fails(bin().args(["infer", "--checkpoint"]).arg(&ck).arg("--input").arg(&dl).arg("--output").arg(&out), &["exists", "--overwrite", "a_img.nii.gz"]);
    assert_eq!(snapshot(&out), outs);
    ok(bin().args(["infer", "--overwrite", "--checkpoint"]).arg(&ck).arg("--input").arg(&dl).arg("--output").arg(&out));
    // Upper-case extensions: the probabilities get their own file.
    let o2 = d.join("out2");
    ok(bin().args(["infer", "--probabilities", "--checkpoint"]).arg(&ck).arg("--input").arg(scans.join("X.NII.GZ")).arg("--output").arg(&o2));
    let lab = unetr_data::read_nifti(&o2.join("X.nii.gz"), &Default::default()).unwrap();
    let prob = unetr_data::read_nifti(&o2.join("X_prob.nii.gz"), &Default::default()).unwrap();
    assert_eq!((lab.header.channels, prob.header.channels), (1, 5));
    let img = unetr_data::read_nifti(&scans.join("X.NII.GZ"), &Default::default()).unwrap();
    assert_eq!(lab.header.dims, img.header.dims);
    assert_eq!(snapshot(&scans), before, "inputs changed");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn infer_and_eval_refuse_bad_options_before_any_work() {
    let t = trained();
    let ck = t.run.join("best");
    let d = tmp("options");
    let out = d.join("out");
    let img = phantom_image(t, 0);
    let before = snapshot(&t.run);
    for (args, want) in [
        (vec!["--overlap=-1"], "--overlap"),
        (vec!["--overlap", "1.0"], "--overlap"),
        (vec!["--sw-batch", "0"], "--sw-batch"),
        (vec!["--blend", "cubic"], "--blend"),
        (vec!["--roi", "64,64,64"], "--roi"),
        (vec!["--device", "tpu"], "tpu"),
        (vec!["--memory-limit", "lots"], "lots"),
    ] {
        fails(bin().args(["infer", "--checkpoint"]).arg(&ck).arg("--input").arg(&img).arg("--output").arg(&out).args(&args), &[want]);
    }
    fails(bin().args(["infer", "--checkpoint"]).arg(d.join("nope")).arg("--input").arg(&img).arg("--output").arg(&out), &["nope"]);
    fails(bin().args(["infer", "--checkpoint"]).arg(&ck).arg("--input").arg(d.join("none.nii.gz")).arg("--output").arg(&out), &["none.nii.gz"]);
    let dl = t.run.join("phantom/dataset.json");
    fails(bin().args(["eval", "--split", "nonsense", "--checkpoint"]).arg(&ck).arg("--datalist").arg(&dl), &["--split"]);
    fails(bin().args(["eval", "--split", "test", "--checkpoint"]).arg(&ck).arg("--datalist").arg(&dl), &["test split is empty"]);
    assert!(!out.exists());
    assert_eq!(snapshot(&t.run), before);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn eval_writes_per_case_results_and_keeps_earlier_ones() {
    let t = trained();
    let d = tmp("eval");
    let (json, csv) = (d.join("summary.json"), d.join("cases.csv"));
    let dl = t.run.join("phantom/dataset.json");
    let o = ok(bin().args(["eval", "--checkpoint"]).arg(t.run.join("best")).arg("--datalist").arg(&dl).arg("--json").arg(&json).arg("--csv").arg(&csv));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(table.contains("liver") && table.contains("mean (fg)"), "{table}");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(s["metric_per_case"].as_array().unwrap().len(), 1);
    assert!(s["mean"]["liver"]["Dice"].is_number(), "{s}");
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 1 + 5);
    let before = snapshot(&d);
    fails(bin().args(["eval", "--checkpoint"]).arg(t.run.join("best")).arg("--datalist").arg(&dl).arg("--json").arg(&json), &["exists", "--overwrite", "summary.json"]);
    // An output that is an input.
    fails(bin().args(["eval", "--checkpoint"]).arg(t.run.join("best")).arg("--datalist").arg(&dl).arg("--json").arg(&dl), &["is an input"]);
    assert_eq!(snapshot(&d), before);
    let _ = std::fs::remove_dir_all(&d);
}

/// Crafted files end in clean errors: a .pth whose tensor claims terabytes (candle's reader alone aborts
/// the process), a NIfTI whose 3000 mm voxels would resample to terabytes, headers that lie, truncated
/// and garbage files of every kind the commands read.
#[test]
fn crafted_and_corrupt_files_end_in_clean_errors() {
    let t = trained();
    let d = tmp("crafted");
    let ck = t.run.join("best");
    let before = snapshot(&t.run);
    let out = d.join("out");
    // NIfTI inputs.
    std::fs::write(d.join("garbage.nii.gz"), b"this is not a volume at all").unwrap();
    std::fs::write(d.join("empty.nii"), b"").unwrap();
    for (f, want) in [
        (crafted("huge_voxels.nii.gz"), "memory limit"),
        (crafted("lying_dims.nii"), "memory limit"),
        (crafted("truncated.nii.gz"), "truncated"),
        (d.join("garbage.nii.gz"), "garbage.nii.gz"),
        (d.join("empty.nii"), "empty.nii"),
    ] {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        fails(bin().args(["infer", "--checkpoint"]).arg(&ck).arg("--input").arg(&f).arg("--output").arg(&out), &[&name, want]);
        if !name.starts_with("huge_voxels") {
            fails(bin().args(["inspect"]).arg(&f), &[&name]);
        }
    }
    // A raised limit lets the lying header through to the size check against the file.
    fails(bin().args(["inspect", "--memory-limit", "1024TiB"]).arg(crafted("lying_dims.nii")), &["lying_dims.nii", "truncated or lying header"]);
    // Weights for `forward`.
    let cfg = d.join("model.json");
    std::fs::write(&cfg, r#"{"in_channels": 1, "out_channels": 2, "img_size": 16, "feature_size": 2, "hidden_size": 16, "mlp_dim": 16, "num_heads": 2}"#).unwrap();
    let input = d.join("input.safetensors");
    let x = candle_core::Tensor::zeros((1, 1, 16, 16, 16), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("input".to_string(), x)]), &input).unwrap();
    std::fs::write(d.join("garbage.pth"), b"PK\x03\x04 not really a zip").unwrap();
    std::fs::write(d.join("garbage.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").unwrap();
    for (w, want) in [
        (crafted("huge_shape.pth"), "storage holds 4"),
        (crafted("lying_storage.pth"), "archive entry"),
        (d.join("garbage.pth"), "garbage.pth"),
        (d.join("garbage.safetensors"), "garbage.safetensors"),
    ] {
        let name = w.file_name().unwrap().to_string_lossy().to_string();
        fails(bin().args(["forward", "--config"]).arg(&cfg).arg("--weights").arg(&w).arg("--input").arg(&input).arg("--output").arg(d.join("y.safetensors")), &[&name, want]);
    }
    fails(bin().args(["forward", "--config"]).arg(&cfg).arg("--weights").arg(crafted("ok_small.pth")).arg("--input").arg(&input).arg("--output").arg(d.join("y.safetensors")), &["missing"]);
    // Checkpoint folders with a corrupt file.
    for (file, bytes, want) in [
        ("config.json", b"{ not json".as_slice(), "config.json"),
        ("train_config.toml", b"[[[".as_slice(), "train_config.toml"),
        ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}".as_slice(), "model.safetensors"),
    ] {
        let bad = d.join(format!("bad-{file}"));
        std::fs::create_dir_all(&bad).unwrap();
        for f in ["model.safetensors", "config.json", "train_config.toml", "state.json"] {
            std::fs::copy(ck.join(f), bad.join(f)).unwrap();
        }
        std::fs::write(bad.join(file), bytes).unwrap();
        fails(bin().args(["infer", "--checkpoint"]).arg(&bad).arg("--input").arg(phantom_image(t, 0)).arg("--output").arg(&out), &[want]);
    }
    // A truncated weights file.
    let trunc = d.join("trunc");
    std::fs::create_dir_all(&trunc).unwrap();
    for f in ["config.json", "train_config.toml"] {
        std::fs::copy(ck.join(f), trunc.join(f)).unwrap();
    }
    let w = std::fs::read(ck.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    fails(bin().args(["infer", "--checkpoint"]).arg(&trunc).arg("--input").arg(phantom_image(t, 0)).arg("--output").arg(&out), &["model.safetensors"]);
    // Datalists.
    std::fs::write(d.join("bad.json"), b"{ \"training\": [").unwrap();
    fails(bin().args(["eval", "--checkpoint"]).arg(&ck).arg("--datalist").arg(d.join("bad.json")), &["bad.json", "malformed JSON"]);
    std::fs::write(d.join("labels.json"), br#"{"labels": {"0": "bg", "255": "x"}, "validation": [{"image": "a.nii.gz", "label": "a.nii.gz"}]}"#).unwrap();
    fails(bin().args(["eval", "--checkpoint"]).arg(&ck).arg("--datalist").arg(d.join("labels.json")), &["labels.json", "0..1"]);
    let cfgbad = d.join("labels-train.toml");
    std::fs::write(&cfgbad, TINY.replace("[data]\nphantom_cases = 5", "[data]\ndataset = \"labels.json\"")).unwrap();
    fails(bin().args(["train", "--config"]).arg(&cfgbad).arg("--out").arg(d.join("run")), &["labels.json"]);
    assert!(!out.exists());
    assert_eq!(snapshot(&t.run), before);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn phantom_and_inspect_work_and_phantom_keeps_an_existing_dataset() {
    let d = tmp("phantom");
    let p = d.join("data");
    ok(bin().args(["phantom", "--cases", "3", "--out"]).arg(&p));
    let before = snapshot(&p);
    fails(bin().args(["phantom", "--cases", "4", "--out"]).arg(&p), &["already holds a dataset", "--overwrite"]);
    assert_eq!(snapshot(&p), before);
    ok(bin().args(["phantom", "--cases", "4", "--overwrite", "--out"]).arg(&p));
    let o = ok(bin().arg("inspect").arg(p.join("imagesTr/phantom_000.nii.gz")));
    assert!(String::from_utf8_lossy(&o.stdout).contains("spacing"));
    fails(bin().args(["phantom", "--cases", "0", "--out"]).arg(d.join("x")), &["--cases"]);
    let _ = std::fs::remove_dir_all(&d);
}

/// Where Chromium is, if installed (Debian's `chromium`).
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The http(s) URLs of a Chromium net log, except the browser's own (Google's update and account hosts).
fn page_requests(netlog: &str) -> Vec<String> {
    let own = ["google.com", "gstatic.com", "googleapis.com", "googleusercontent.com"];
    let mut urls: Vec<String> = netlog
        .match_indices("\"url\":\"")
        .filter_map(|(i, m)| netlog[i + m.len()..].split('"').next().map(str::to_string))
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .filter(|u| {
            let host = u.split("//").nth(1).unwrap_or("").split(['/', ':', '?']).next().unwrap_or("");
            !own.iter().any(|o| host == *o || host.ends_with(&format!(".{o}")))
        })
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// The HTML report is one self-contained file: nothing it references lies outside it (checked in the text),
/// and headless Chromium, with every host unresolvable, renders it with no console error and no failed
/// request, and takes a screenshot. `eval --report` writes the same kind of report.
#[test]
fn the_html_report_is_self_contained_and_renders_in_chromium() {
    let t = trained();
    let report = t.run.join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    for want in ["Per class", "Per case", "liver", "<svg", "data:image/png;base64,", "Configuration", "Summary"] {
        assert!(html.contains(want), "report lacks {want:?}");
    }
    for bad in ["<script", "<link", "@import", "url(", "<iframe", "<object", "<embed"] {
        assert!(!html.contains(bad), "report references something outside itself: {bad:?}");
    }
    // Every src/href is inline data or an anchor (the SVGs' xmlns names a namespace, not a resource).
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let v = &html[i + attr.len()..];
            assert!(v.starts_with("data:") || v.starts_with('#'), "report references {}", &v[..v.len().min(60)]);
        }
    }
    let d = tmp("report");
    let eval_report = d.join("eval.html");
    ok(bin().args(["eval", "--checkpoint"]).arg(t.run.join("best")).arg("--datalist").arg(t.run.join("phantom/dataset.json")).arg("--report").arg(&eval_report));
    let eval_html = std::fs::read_to_string(&eval_report).unwrap();
    assert!(eval_html.contains("Per case") && eval_html.contains("Best and worst cases"), "eval report");
    let Some(chrome) = chromium() else {
        return unetr_testkit::skip_or_fail(module_path!(), "chromium", "apt-get install chromium");
    };
    // A control page with a failing script and an outside image: the detector must see both.
    let control = d.join("control.html");
    std::fs::write(&control, "<html><body><img src=\"https://example.invalid/x.png\"><script>undefinedFunction();</script></body></html>").unwrap();
    for (name, page) in [("control", &control), ("train", &report), ("eval", &eval_report)] {
        let shot = d.join(format!("{name}.png"));
        let o = Command::new(&chrome)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .args(["--enable-logging=stderr", "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,2400", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", d.join(format!("profile-{name}")).display()))
            .arg(format!("--log-net-log={}", d.join(format!("{name}.netlog.json")).display()))
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: chromium failed\n{log}");
        let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught")).collect();
        let requests = page_requests(&std::fs::read_to_string(d.join(format!("{name}.netlog.json"))).unwrap_or_default());
        if name == "control" {
            assert!(!console.is_empty() && requests.iter().any(|u| u.contains("example.invalid")), "the detector missed the control page's error or request:\n{log}\n{requests:?}");
            continue;
        }
        assert!(console.is_empty(), "{name}: console messages:\n{}", console.join("\n"));
        assert!(requests.is_empty(), "{name}: the page requested {requests:?}");
        let png = std::fs::read(&shot).unwrap_or_default();
        assert!(png.len() > 20_000, "{name}: the screenshot is empty ({} bytes)", png.len());
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// The presets of the paper's tasks run on their stand-ins through the binary (a small model, 2 steps):
/// BTCV's recipe on the CT phantoms, MSD spleen on the spleen-only phantoms, MSD brain tumour on the 4-channel
/// phantoms; each writes checkpoints, predictions and a report; the brain-tumour run reports per-region
/// metrics, and eval scores its regions with Dice and HD95.
#[test]
fn the_task_presets_run_on_their_stand_ins() {
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/presets");
    let d = tmp("presets");
    let small = ["model.feature_size=2", "model.hidden_size=16", "model.mlp_dim=16", "model.num_heads=2", "model.num_layers=4", "validation.every=2", "data.phantom_cases=4", "output.progress=false"];
    for (preset, extra, names) in [
        ("btcv", vec!["transforms.num_samples=1"], vec!["liver", "spleen"]),
        ("msd_spleen", vec!["transforms.num_samples=1", "data.phantom_size=[64,64,40]"], vec!["spleen"]),
        ("msd_brats", vec!["data.phantom_size=[64,64,52]"], vec!["TC", "WT", "ET"]),
    ] {
        let run = d.join(preset);
        let mut c = bin();
        c.args(["train", "--steps", "2", "--config"]).arg(presets.join(format!("{preset}.toml"))).arg("--out").arg(&run);
        for s in small.iter().chain(extra.iter()) {
            c.args(["--set", s]);
        }
        let o = ok(&mut c);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        for n in &names {
            assert!(out.contains(n), "{preset}: {out}");
        }
        for f in ["best/model.safetensors", "checkpoint/state.json", "report.html", "phantom/dataset.json"] {
            assert!(run.join(f).is_file(), "{preset}: {f}");
        }
        assert!(std::fs::read_dir(run.join("predictions")).unwrap().count() >= 1, "{preset}");
    }
    let brats = d.join("msd_brats");
    let json = d.join("brats.json");
    let o = ok(bin().args(["eval", "--checkpoint"]).arg(brats.join("best")).arg("--datalist").arg(brats.join("phantom/dataset.json")).arg("--json").arg(&json));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(table.contains("TC") && table.contains("WT") && table.contains("ET") && table.contains("HD95"), "{table}");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(s["mean"]["WT"]["Dice"].is_number() || s["mean"]["WT"]["Dice"].is_null(), "{s}");
    let _ = std::fs::remove_dir_all(&d);
}
