//! Reading files a user names: keys, certificates, keyrings, allowed-signers
//! files, event JSON. A wrong path can name a device, a FIFO or a huge file,
//! and some of these come from a repository someone else controls, so each
//! is read only if it is a regular file, and never more than a bound.

use std::io::Read as _;
use std::path::Path;

/// The bytes of the regular file at `path`, refused (`InvalidInput`, with
/// the reason) when it is not one or holds more than `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    // Checked before opening: opening a FIFO blocks until a writer comes.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {}; at most that is read", size(max)),
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_text(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, max)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

fn size(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_bounded(&p, 5).unwrap(), b"12345");
        let e = read_bounded(&p, 4).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "larger than 4 bytes; at most that is read");
        let e = read_bounded(dir.path(), 4).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        // A FIFO is refused without blocking on the open.
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(
            read_bounded(&fifo, 4).unwrap_err().to_string(),
            "not a regular file"
        );
        assert_eq!(
            read_bounded(Path::new("/dev/zero"), 4)
                .unwrap_err()
                .to_string(),
            "not a regular file"
        );
        std::fs::write(&p, b"\xff").unwrap();
        assert!(read_bounded_text(&p, 4).is_err());
    }
}
