//! A small filesystem of its own (a tmpfs), for a tablespace Postgres can
//! fill up: Postgres then answers `53100 could not extend file`.

use std::path::PathBuf;
use std::process::Command;

/// A tmpfs of `size`, unmounted and removed when dropped.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    /// Needs root; the directory is handed to `postgres` (the test
    /// cluster's server user when the tests run as root).
    pub fn mount(size: &str) -> SmallDisk {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("pgwebhooks-small-disk-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(&dir));
        run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        SmallDisk(dir)
    }
}

impl SmallDisk {
    /// Makes it the tablespace `small` and moves `tables` there.
    pub async fn hold_tables(&self, c: &tokio_postgres::Client, tables: &[&str]) {
        // CREATE TABLESPACE cannot run in a transaction block: alone.
        c.batch_execute(&format!(
            "CREATE TABLESPACE small LOCATION '{}'",
            self.0.display()
        ))
        .await
        .unwrap();
        for t in tables {
            c.batch_execute(&format!("ALTER TABLE {t} SET TABLESPACE small"))
                .await
                .unwrap();
        }
    }

    /// Fills what is left with a file of our own (until `ENOSPC`).
    #[allow(dead_code)] // used by tests/fault_injection.rs
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 1 << 20];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", self.0.display()),
            }
        }
        // The last partial pages too.
        while let Ok(n) = f.write(&chunk[..4096]) {
            if n == 0 {
                break;
            }
        }
    }

    /// Frees what [`SmallDisk::fill`] took.
    #[allow(dead_code)] // used by tests/fault_injection.rs
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}
