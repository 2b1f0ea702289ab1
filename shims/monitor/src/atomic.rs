//! Small files replaced atomically: write a temp file, rename. `write` also fsyncs the file and
//! the directory (the exit record must survive a power loss); `write_fast` does not: the records
//! that only describe live processes (`monitor.pid`, `created`, `create-error`) mean nothing
//! after a reboot, and the rename alone is atomic for readers and across a crash of any process.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, data, true)
}

pub fn write_fast(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, data, false)
}

fn write_with(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)?;
    // Make the rename itself durable; a failure here does not undo it.
    if durable {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_content_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("sk-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("exit");
        super::write(&p, b"one").unwrap();
        super::write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
