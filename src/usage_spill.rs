//! Usage that could not be written before exit, kept on disk until the next
//! start writes it.
//!
//! At shutdown the accumulator gets the rest of the deadline to write
//! everything; if the store is unavailable all that time, the app takes the
//! unwritten records (keys included) and keeps them in
//! `<store.data_dir>/usage-unwritten.jsonl`. The next start hands them back
//! to the accumulator, which writes them under their original keys — a
//! record that had landed after all is answered `AlreadyApplied` — and the
//! file is removed once every one is acknowledged. (On a host whose disk does
//! not survive a restart this only helps for restarts in place.)

use std::{
    fs,
    io::{self, BufRead, BufWriter, Write},
    path::{Path, PathBuf},
};

use dynabase_actors::{domain::records::UsageRecord, UnixMillis};

const FILE_NAME: &str = "usage-unwritten.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("usage spill file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("usage record cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The spill file of one data directory.
#[derive(Debug, Clone)]
pub struct Spill {
    dir: PathBuf,
    path: PathBuf,
}

impl Spill {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.to_path_buf(),
            path: data_dir.join(FILE_NAME),
        }
    }

    fn io(&self, path: &Path) -> impl Fn(io::Error) -> SpillError {
        let path = path.to_path_buf();
        move |source| SpillError::Io {
            path: path.clone(),
            source,
        }
    }

    /// Replaces the file with `records`: written to a temporary file, synced,
    /// then renamed, so a crash leaves the old file or the new one.
    pub fn keep(&self, records: &[UsageRecord]) -> Result<(), SpillError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let file = fs::File::create(&tmp).map_err(self.io(&tmp))?;
        let mut out = BufWriter::new(file);
        for record in records {
            serde_json::to_writer(&mut out, record)?;
            out.write_all(b"\n").map_err(self.io(&tmp))?;
        }
        let file = out
            .into_inner()
            .map_err(|e| self.io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(self.io(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(self.io(&self.path))
    }

    /// The kept records (none if there is no file). Lines that cannot be
    /// read are logged, and the file is set aside as
    /// `usage-unwritten.<ms>.rejected` for an operator rather than removed
    /// later with the rest.
    pub fn load(&self) -> Result<Vec<UsageRecord>, SpillError> {
        let file = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&self.path)(e)),
        };
        let mut records = Vec::new();
        let mut rejected = 0usize;
        for (n, line) in io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(self.io(&self.path))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<UsageRecord>(&line) {
                Ok(record) => records.push(record),
                Err(error) => {
                    rejected += 1;
                    tracing::error!(line = n + 1, %error, "unreadable usage record in the spill file");
                }
            }
        }
        if rejected > 0 {
            let aside = self
                .dir
                .join(format!("usage-unwritten.{}.rejected", UnixMillis::now().0));
            fs::copy(&self.path, &aside).map_err(self.io(&aside))?;
            tracing::error!(rejected, copy = %aside.display(), "spill file kept for an operator");
        }
        Ok(records)
    }

    pub fn remove(&self) -> Result<(), SpillError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&self.path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynabase_actors::{domain::records::Period, OrgId};
    use rust_decimal::Decimal;

    fn record(key: &str) -> UsageRecord {
        UsageRecord {
            key: key.into(),
            org: OrgId::parse("acme").unwrap(),
            database: "app".into(),
            period: Period::parse("2026-11").unwrap(),
            window_start: UnixMillis(1_793_491_200_000),
            query_cycles: 3,
            duration_us: 1_234,
            vcpu_hours: Decimal::new(1234, 13),
            gb_hours: Decimal::new(5, 9),
        }
    }

    #[test]
    fn kept_records_come_back_exactly_and_bad_lines_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(&dir.path().join("data"));
        assert!(spill.load().unwrap().is_empty());
        let records = vec![record("r:acme:app:1:a-1"), record("r:acme:app:1:a-2")];
        spill.keep(&records).unwrap();
        assert_eq!(spill.load().unwrap(), records);

        let mut text = fs::read_to_string(&spill.path).unwrap();
        text.push_str("{not json\n");
        fs::write(&spill.path, text).unwrap();
        assert_eq!(spill.load().unwrap(), records);
        let set_aside = fs::read_dir(dir.path().join("data"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".rejected")
            })
            .count();
        assert_eq!(set_aside, 1);
        spill.remove().unwrap();
        assert!(spill.load().unwrap().is_empty());
        spill.remove().unwrap();
    }
}
