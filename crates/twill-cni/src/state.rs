//! The rendered delegate config, kept per container so DEL works with exactly what ADD
//! used, even after subnet.env changed or vanished.

use std::path::{Path, PathBuf};

use crate::error::{code, CniError};

/// A container ID becomes a file name: refuse anything that could escape the directory.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let bad = id.is_empty()
        || id == "."
        || id == ".."
        || id.contains('/')
        || id.contains('\0')
        || id.contains("..")
        || id.len() > 255;
    if bad {
        return Err(CniError::new(
            code::INVALID_ENV,
            "invalid CNI_CONTAINERID",
            format!("{id:?} cannot be used as a file name"),
        ));
    }
    Ok(())
}

pub fn path(data_dir: &str, container_id: &str) -> PathBuf {
    Path::new(data_dir).join(container_id)
}

pub fn save(data_dir: &str, container_id: &str, conf: &[u8]) -> Result<(), CniError> {
    let p = path(data_dir, container_id);
    twill_config::write_atomic(&p, conf, 0o600)
        .map_err(|e| CniError::new(code::IO, format!("saving {}", p.display()), e.to_string()))
}

/// `None` when there is no state (DEL of an unknown container is not an error).
pub fn load(data_dir: &str, container_id: &str) -> Result<Option<Vec<u8>>, CniError> {
    let p = path(data_dir, container_id);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            code::IO,
            format!("reading {}", p.display()),
            e.to_string(),
        )),
    }
}

pub fn remove(data_dir: &str, container_id: &str) -> Result<(), CniError> {
    let p = path(data_dir, container_id);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::new(
            code::IO,
            format!("removing {}", p.display()),
            e.to_string(),
        )),
    }
}

/// The container IDs with saved state in `data_dir` (none when it does not exist).
pub fn list(data_dir: &str) -> Result<Vec<String>, CniError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::new(
                code::IO,
                format!("listing {data_dir}"),
                e.to_string(),
            ))
        }
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        // write_atomic's temp files are dot files; no container ID starts with a dot.
        .filter(|n| !n.starts_with('.') && validate_container_id(n).is_ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// The state directories to read, in order: the configured one, and without a configured
/// one also where earlier twill releases wrote.
pub fn read_dirs(conf: &crate::PluginConf) -> Vec<&str> {
    let mut dirs = vec![conf.data_dir.as_str()];
    if !conf.data_dir_given {
        dirs.push(crate::LEGACY_DATA_DIR);
    }
    dirs
}

/// The saved state of `container_id` from the first of `dirs` that has it, with that dir.
pub fn find<'a>(
    dirs: &[&'a str],
    container_id: &str,
) -> Result<Option<(&'a str, Vec<u8>)>, CniError> {
    for d in dirs {
        if let Some(b) = load(d, container_id)? {
            return Ok(Some((d, b)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_that_escape_are_refused() {
        for bad in ["", ".", "..", "../etc/passwd", "a/b", "a\0b", "x..y"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc123", "k8s_pod-1.2", &"f".repeat(64)] {
            assert!(validate_container_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn save_load_remove() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state").display().to_string();
        assert_eq!(load(&dir, "c1").unwrap(), None);
        save(&dir, "c1", b"{}").unwrap();
        assert_eq!(load(&dir, "c1").unwrap().unwrap(), b"{}");
        let mode = std::fs::metadata(path(&dir, "c1"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        save(&dir, "c2", b"{}").unwrap();
        assert_eq!(list(&dir).unwrap(), ["c1", "c2"]);
        assert_eq!(find(&["/nonexistent", &dir], "c2").unwrap().unwrap().0, dir);
        remove(&dir, "c2").unwrap();
        remove(&dir, "c1").unwrap();
        remove(&dir, "c1").unwrap();
        assert!(list(&dir).unwrap().is_empty());
        assert_eq!(load(&dir, "c1").unwrap(), None);
    }
}
