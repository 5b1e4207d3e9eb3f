//! Reading the files a configuration names (the config itself, plugin
//! modules, certificates, targets files) so that no file can stall or
//! exhaust the gateway: only regular files are read, never more than a cap,
//! and a file that must stay inside a folder is refused when it (or a
//! symlink on its way) resolves outside it.
//!
//! A FIFO, a socket or a device (`/dev/zero`) is refused from its metadata
//! before it is opened; the file is then opened non-blocking and its
//! metadata checked again on the open handle, so one swapped in between is
//! refused too, and the read stops one byte past the cap whatever the
//! metadata said. Callers on an async runtime run this on a blocking
//! thread for large files (modules).

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest config file.
pub const MAX_CONFIG_SIZE: u64 = 4 << 20;
/// Largest certificate, key, CA or targets file.
pub const MAX_SMALL_FILE: u64 = 1 << 20;

/// Why a file was not read. The message does not name the file: callers
/// say which file it is.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be opened or read.
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// A FIFO, socket, device or folder.
    #[error("is a {0}, not a regular file")]
    NotRegular(&'static str),
    /// Larger than the cap.
    #[error("is {size} bytes, more than the {cap}-byte limit")]
    TooLarge {
        /// Its size (at least; the read stops past the cap).
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// It resolves (through a symlink) outside the folder it must be in.
    #[error("resolves to {}, outside {}", .resolved.display(), .dir.display())]
    Outside {
        /// Where it leads.
        resolved: PathBuf,
        /// The folder.
        dir: PathBuf,
    },
}

/// Read `path` whole if it is a regular file of at most `cap` bytes and,
/// with `within`, if it resolves inside that folder (symlinks that stay
/// inside it are followed, as Kubernetes ConfigMap mounts need).
pub fn read_bounded(path: &Path, cap: u64, within: Option<&Path>) -> Result<Vec<u8>, FileError> {
    if let Some(dir) = within {
        let dir = dir.canonicalize().map_err(FileError::Read)?;
        let resolved = path.canonicalize().map_err(FileError::Read)?;
        if !resolved.starts_with(&dir) {
            return Err(FileError::Outside { resolved, dir });
        }
    }
    check(&std::fs::metadata(path).map_err(FileError::Read)?, cap)?;
    let file = open_nonblocking(path).map_err(FileError::Read)?;
    check(&file.metadata().map_err(FileError::Read)?, cap)?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(FileError::Read)?;
    let size = bytes.len() as u64;
    if size > cap {
        return Err(FileError::TooLarge { size, cap });
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text(path: &Path, cap: u64) -> Result<String, FileError> {
    let bytes = read_bounded(path, cap, None)?;
    String::from_utf8(bytes)
        .map_err(|e| FileError::Read(std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error())))
}

fn check(meta: &Metadata, cap: u64) -> Result<(), FileError> {
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(FileError::NotRegular(kind_name(&kind)));
    }
    if meta.len() > cap {
        return Err(FileError::TooLarge { size: meta.len(), cap });
    }
    Ok(())
}

fn kind_name(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "FIFO";
        }
        if kind.is_socket() {
            return "socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "device";
        }
    }
    if kind.is_dir() { "folder" } else { "special file" }
}

/// Open for reading without waiting for a writer (a FIFO swapped in after
/// the metadata check would otherwise block the open).
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_and_the_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inside = dir.path().join("in");
        std::fs::create_dir(&inside).expect("mkdir");
        std::fs::write(inside.join("ok.wasm"), b"1234").expect("write");
        assert_eq!(read_bounded(&inside.join("ok.wasm"), 4, Some(&inside)).expect("reads"), b"1234");
        assert!(matches!(read_bounded(&inside.join("ok.wasm"), 3, None), Err(FileError::TooLarge { size: 4, cap: 3 })));
        assert!(matches!(read_bounded(&inside, 10, None), Err(FileError::NotRegular("folder"))));
        std::fs::write(dir.path().join("out.wasm"), b"x").expect("write");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("out.wasm"), inside.join("link.wasm")).expect("symlink");
            assert!(matches!(
                read_bounded(&inside.join("link.wasm"), 10, Some(&inside)),
                Err(FileError::Outside { .. })
            ));
            std::os::unix::fs::symlink("ok.wasm", inside.join("alias.wasm")).expect("symlink");
            assert_eq!(read_bounded(&inside.join("alias.wasm"), 10, Some(&inside)).expect("inside"), b"1234");
            std::os::unix::fs::symlink("/dev/zero", inside.join("zero.wasm")).expect("symlink");
            assert!(matches!(read_bounded(&inside.join("zero.wasm"), 10, None), Err(FileError::NotRegular("device"))));
        }
    }
}
