//! Writing measured tables into docs/benchmarks.md between `<!-- NAME:start -->` / `<!-- NAME:end -->`.

use anyhow::Result;

pub fn replace_section(name: &str, body: &str) -> Result<()> {
    let path = crate::repo_root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (start, end) = (format!("<!-- {name}:start -->"), format!("<!-- {name}:end -->"));
    let block = format!("{start}\n{}\n{end}", body.trim_end());
    let new = match (doc.find(&start), doc.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &doc[..a], block, &doc[b + end.len()..]),
        _ => format!("{}\n{}\n", doc.trim_end(), block),
    };
    // Atomic: a crash mid-write leaves the old file.
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}
