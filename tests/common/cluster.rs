//! Tenant PostgreSQL clusters a test creates for itself: `initdb` into a
//! temporary directory (trust authentication, a free port, 127.0.0.1 only),
//! started with `pg_ctl`, stopped and removed on drop. As root, pg_ctl and
//! initdb run as the `postgres` OS user through a small wrapper directory,
//! which is also the `pg_bin` the `local` compute driver is given.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

/// PostgreSQL's binaries (scripts/services.sh installs version 15 here).
pub fn pg_bin() -> PathBuf {
    PathBuf::from(
        std::env::var("DYNABASE_TEST_PG_BIN")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned()),
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub struct Cluster {
    /// Holds the data directory, the wrapper and the log.
    _root: tempfile::TempDir,
    pub data_dir: PathBuf,
    /// Directory with `pg_ctl` (the driver's `pg_bin`).
    pub bin: PathBuf,
    pub port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Cluster {
    /// A fresh, running cluster; `None` (test skipped, or failed under CI)
    /// when PostgreSQL's binaries are missing.
    pub fn start() -> Option<Cluster> {
        if !pg_bin().join("initdb").exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI requires PostgreSQL binaries in {}", pg_bin().display());
            }
            eprintln!("SKIP: no PostgreSQL binaries in {}", pg_bin().display());
            return None;
        }
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let runner = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        for tool in ["pg_ctl", "initdb"] {
            let path = bin.join(tool);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\ncd /\nexec {runner}{} \"$@\"\n",
                    pg_bin().join(tool).display()
                ),
            )
            .expect("wrapper");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod wrapper");
        }
        let data_dir = root.path().join("data");
        std::fs::create_dir(&data_dir).expect("data dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&data_dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown data dir");
        }
        let out = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nshared_buffers = 16MB\nmax_connections = 40\n",
            data_dir.display()
        );
        let conf_path = data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
        let cluster = Cluster {
            _root: root,
            data_dir,
            bin,
            port,
        };
        cluster.pg_ctl(&["-w", "start"]);
        Some(cluster)
    }

    fn log(&self) -> PathBuf {
        self.data_dir.join("test.log")
    }

    /// Runs pg_ctl on this cluster; panics unless it succeeds.
    pub fn pg_ctl(&self, args: &[&str]) {
        let out = Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.log())
            .args(args)
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether the postmaster runs (`pg_ctl status`).
    pub fn running(&self) -> bool {
        Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `127.0.0.1:PORT`, the org's upstream.
    pub fn upstream(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `local` driver's compute section for this cluster.
    pub fn local_spec(&self) -> serde_json::Value {
        serde_json::json!({
            "driver": "local",
            "data_dir": self.data_dir,
            "port": self.port,
            "pg_bin": self.bin,
        })
    }

    pub fn data_path(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
