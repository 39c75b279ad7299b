//! The one rule for every file a command writes: an output path must not destroy anything. It
//! may not be a symbolic link (writing would replace the link, not what it points to, or follow
//! it somewhere unexpected), an existing file that is not a regular file (a device node, a
//! directory, a pipe), or (after canonicalisation) an input of the same run, a file inside an
//! input directory (the model's), or another output of the run. Checked once, by each command's
//! settings validation, before anything is loaded or written.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Resolves `path` as the file system would: its deepest existing ancestor canonicalised (links
/// and `..` resolved), with the components that do not exist yet appended (a folder an output
/// will create, such as `tsmc reproduce --out-dir MODEL/runs`).
fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(path),
            Err(_) => path.to_path_buf(),
        }
    };
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    let mut base = absolute.as_path();
    loop {
        if let Ok(mut p) = base.canonicalize() {
            for name in rest.iter().rev() {
                if *name == ".." {
                    p.pop();
                } else if *name != "." {
                    p.push(name);
                }
            }
            return p;
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                base = parent;
            }
            // `..` or `.` at the end of a path that does not exist: keep the whole tail.
            (Some(parent), None) => {
                rest.push(
                    base.components()
                        .next_back()
                        .map_or("".as_ref(), |c| c.as_os_str()),
                );
                base = parent;
            }
            _ => return absolute,
        }
    }
}

/// Checks that an output path is neither a symbolic link nor an existing non-regular file.
pub fn check_target(option: &str, path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{option} {} is a symbolic link: refusing to replace it (give the path of a regular file)",
            path.display()
        ),
        Ok(m) if !m.is_file() => bail!(
            "{option} {} exists and is not a regular file: refusing to replace it",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// Checks every output of a run (option name, path) against the rule above, given the run's
/// inputs (option name, path: files, or directories whose files are all inputs).
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    let inputs: Vec<(&str, &Path, PathBuf)> =
        inputs.iter().map(|&(o, p)| (o, p, resolve(p))).collect();
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for &(option, path) in outputs {
        check_target(option, path)?;
        let out = resolve(path);
        for (input_option, input, resolved) in &inputs {
            if out == *resolved {
                bail!(
                    "{option} {} is the same file as {input_option} {}: the run would destroy its own input",
                    path.display(),
                    input.display()
                );
            }
            if resolved.is_dir() && out.starts_with(resolved) {
                bail!(
                    "{option} {} is inside {input_option} {}: the run would overwrite its own input",
                    path.display(),
                    input.display()
                );
            }
        }
        if let Some((other, _)) = seen.iter().find(|(_, p)| *p == out) {
            bail!(
                "{option} {} is the same file as {other}: two outputs of one run cannot share a path",
                path.display()
            );
        }
        seen.push((option, out));
    }
    Ok(())
}

/// The model as an input: the default model's cached file, a model directory or a .gguf file.
pub fn model_input(model: &str) -> PathBuf {
    if model == "default" {
        lm_burn::default_model::default_model_path()
    } else {
        PathBuf::from(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_would_destroy_an_input_a_link_or_a_device_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = d.join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        let model = d.join("model");
        std::fs::create_dir(&model).unwrap();
        let ok = |outs: &[(&str, &Path)]| {
            check_outputs(outs, &[("--exact", &input), ("--model", &model)])
        };
        assert!(ok(&[("--out", &d.join("new.jsonl"))]).is_ok());
        // The same file by another spelling.
        let e = ok(&[("--out", &d.join("model/../in.jsonl"))]).unwrap_err();
        assert!(e.to_string().contains("same file as --exact"), "{e}");
        let e = ok(&[("--out", &model.join("config.json"))]).unwrap_err();
        assert!(e.to_string().contains("inside --model"), "{e}");
        // Inside the model by way of folders that do not exist yet (an output directory the
        // run would create).
        for p in [
            "model/runs/records.jsonl",
            "new/../model/runs/a/../table.md",
        ] {
            let e = ok(&[("--out", &d.join(p))]).unwrap_err();
            assert!(e.to_string().contains("inside --model"), "{p}: {e}");
        }
        let e = ok(&[("--out", &d.join("a")), ("--checkpoint", &d.join("a"))]).unwrap_err();
        assert!(e.to_string().contains("two outputs"), "{e}");
        #[cfg(unix)]
        {
            let link = d.join("link.jsonl");
            std::os::unix::fs::symlink(d.join("elsewhere"), &link).unwrap();
            let e = ok(&[("--out", &link)]).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            let e = ok(&[("--out", Path::new("/dev/null"))]).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let e = ok(&[("--out", &model)]).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
