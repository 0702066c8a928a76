//! The training log: log.jsonl (one JSON record per step, read back for the plots and the report) and
//! log.csv (the same numbers as columns).

use crate::error::{ferr, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use unetr_infer::checkpoint::write_file_atomic;

/// The training log: log.jsonl (read back for the plots) and optionally log.csv, one row per step.
pub struct TrainLog {
    jsonl: std::fs::File,
    csv: Option<std::fs::File>,
    paths: (PathBuf, PathBuf),
    n_classes: usize,
}

impl TrainLog {
    const CSV_COLS: [&'static str; 5] = ["step", "loss", "lr", "grad_norm", "elapsed_s"];

    /// Opens the logs for appending; on resume, first drops the records after the checkpoint's step (a
    /// killed run may have logged steps that the resumed run repeats).
    pub fn open(out: &Path, n_classes: usize, csv: bool, keep_until: Option<u64>) -> Result<Self> {
        let paths = (out.join("log.jsonl"), out.join("log.csv"));
        for p in [&paths.0, &paths.1] {
            match keep_until {
                Some(step) if p.exists() => {
                    let text = std::fs::read_to_string(p).map_err(|e| ferr(p, e))?;
                    // Only whole records of steps <= the checkpoint's (a kill may have cut the last line).
                    let is_csv = p.extension().is_some_and(|e| e == "csv");
                    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
                    let ncol = whole.lines().next().map_or(0, |h| h.split(',').count());
                    let kept: String = whole
                        .lines()
                        .enumerate()
                        .filter(|(i, l)| {
                            let rec_step = if is_csv {
                                if *i == 0 {
                                    return true;
                                }
                                let f: Vec<&str> = l.split(',').collect();
                                if f.len() == ncol { f[0].parse::<u64>().ok() } else { None }
                            } else {
                                serde_json::from_str::<serde_json::Value>(l).ok().and_then(|r| r["step"].as_u64())
                            };
                            rec_step.is_some_and(|s| s <= step)
                        })
                        .map(|(_, l)| format!("{l}\n"))
                        .collect();
                    write_file_atomic(p, kept.as_bytes())?;
                }
                None if p.exists() => std::fs::remove_file(p).map_err(|e| ferr(p, e))?,
                _ => {}
            }
        }
        let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| ferr(p, e));
        let jsonl = open(&paths.0)?;
        let csv = if csv {
            let fresh = !paths.1.exists() || std::fs::metadata(&paths.1).map(|m| m.len() == 0).unwrap_or(true);
            let mut f = open(&paths.1)?;
            if fresh {
                let mut head: Vec<String> = Self::CSV_COLS.iter().map(|s| s.to_string()).collect();
                head.push("val_mean_dice".into());
                head.extend((0..n_classes).map(|c| format!("val_dice_{c}")));
                writeln!(f, "{}", head.join(",")).map_err(|e| ferr(&paths.1, e))?;
            }
            Some(f)
        } else {
            None
        };
        Ok(Self { jsonl, csv, paths, n_classes })
    }

    pub fn write(&mut self, rec: &serde_json::Value) -> Result<()> {
        writeln!(self.jsonl, "{rec}").map_err(|e| ferr(&self.paths.0, e))?;
        if let Some(f) = &mut self.csv {
            let num = |v: &serde_json::Value| v.as_f64().map(|x| x.to_string()).unwrap_or_default();
            let mut row: Vec<String> = Self::CSV_COLS.iter().map(|k| num(&rec[*k])).collect();
            row.push(num(&rec["val_mean_dice"]));
            row.extend((0..self.n_classes).map(|c| num(&rec["val_dice"][c])));
            writeln!(f, "{}", row.join(",")).map_err(|e| ferr(&self.paths.1, e))?;
        }
        Ok(())
    }
}

