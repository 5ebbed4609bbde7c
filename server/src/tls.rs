//! The server's TLS identity: configured (`tls.cert`, `tls.key`), or the
//! pair in the data dir, generated on the first start.
//!
//! Phones pin the certificate, so a new identity locks every phone out
//! until it learns the new fingerprint: one is made only on a start that
//! finds neither file, never to stand in for one file gone missing, and
//! never by a reload (SIGHUP, `isle ctl reload`), which keeps the current
//! identity when it cannot read both files.

use std::{
    fs,
    io::BufReader,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

pub struct Identity {
    pub config: Arc<ServerConfig>,
    pub cert_path: PathBuf,
    /// SHA-256 of the leaf certificate, hex with colons: what a phone pins.
    pub fingerprint: String,
}

/// The identity to start with: the configured files, else the data dir's
/// pair, generated when neither file is there. Err: a file cannot be read
/// or does not hold what it should, or only one of the data dir's pair is
/// there.
pub fn load_or_generate(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<Identity> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.to_owned(), key.to_owned()),
        (None, None) => generate_if_neither(data_dir)?,
        _ => return Err(anyhow!("tls.cert and tls.key must be set together")),
    };
    load_pair(cert_path, key_path)
}

/// The identity read again for a reload: the configured files, else the
/// data dir's pair, which must both be there. Never generates one.
pub fn load(cert: Option<&Path>, key: Option<&Path>, data_dir: &Path) -> anyhow::Result<Identity> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.to_owned(), key.to_owned()),
        (None, None) => {
            let (cert_path, key_path) = generated_paths(data_dir);
            for path in [&cert_path, &key_path] {
                if !path.exists() {
                    bail!(
                        "{} is missing: a reload reads the certificate and key again and never \
                         makes a new identity; the current one stays",
                        path.display()
                    );
                }
            }
            (cert_path, key_path)
        }
        _ => return Err(anyhow!("tls.cert and tls.key must be set together")),
    };
    load_pair(cert_path, key_path)
}

/// What a start would use, checked without changing anything (for
/// `isle check-config`): the configured pair read and put together, or
/// the data dir's pair when both files are there. Ok: a line saying which
/// identity and its fingerprint. Err: why a start would refuse (a file
/// that cannot be read, by this user, or does not hold what it should;
/// one of the data dir's pair without the other).
pub fn check(cert: Option<&Path>, key: Option<&Path>, data_dir: &Path) -> anyhow::Result<String> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.to_owned(), key.to_owned()),
        (None, None) => {
            let (cert_path, key_path) = generated_paths(data_dir);
            match (cert_path.exists(), key_path.exists()) {
                (false, false) => {
                    return Ok(format!(
                        "none yet: the first start makes a self-signed one in {}",
                        data_dir.join("tls").display()
                    ))
                }
                (true, true) => (cert_path, key_path),
                (true, false) => bail!(
                    "{} is there but {} is missing: the server would refuse to start",
                    cert_path.display(),
                    key_path.display()
                ),
                (false, true) => bail!(
                    "{} is there but {} is missing: the server would refuse to start",
                    key_path.display(),
                    cert_path.display()
                ),
            }
        }
        _ => return Err(anyhow!("tls.cert and tls.key must be set together")),
    };
    let identity = load_pair(cert_path, key_path.clone())?;
    Ok(format!(
        "{} and {}, fingerprint {}",
        identity.cert_path.display(),
        key_path.display(),
        identity.fingerprint
    ))
}

/// Reads a certificate chain and its key into a server configuration.
fn load_pair(cert_path: PathBuf, key_path: PathBuf) -> anyhow::Result<Identity> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(
        fs::File::open(&cert_path).with_context(|| format!("opening {}", cert_path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading certificates from {}", cert_path.display()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| anyhow!("no certificate in {}", cert_path.display()))?;
    let fingerprint = Sha256::digest(leaf.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let key = rustls_pemfile::private_key(&mut BufReader::new(
        fs::File::open(&key_path).with_context(|| format!("opening {}", key_path.display()))?,
    ))
    .with_context(|| format!("reading private key from {}", key_path.display()))?
    .ok_or_else(|| anyhow!("no private key in {}", key_path.display()))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("certificate and key do not form a usable identity")?;
    Ok(Identity {
        config: Arc::new(config),
        cert_path,
        fingerprint,
    })
}

/// Where the generated identity lives: `DATA_DIR/tls/{cert,key}.pem`.
fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The data dir's pair: as it is when both files are there, generated when
/// neither is. Err when only one is: a lost key (or certificate) is the
/// operator's to restore, since a new identity locks phones out.
fn generate_if_neither(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = generated_paths(data_dir);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => return Ok((cert_path, key_path)),
        (false, false) => {}
        (true, false) | (false, true) => {
            let (found, missing) = match cert_path.exists() {
                true => (&cert_path, &key_path),
                false => (&key_path, &cert_path),
            };
            bail!(
                "{} is there but {} is missing: refusing to make a new identity, which phones \
                 that pinned the certificate would refuse; restore the missing file, or remove \
                 both for a new identity",
                found.display(),
                missing.display()
            );
        }
    }
    generate(data_dir)?;
    Ok((cert_path, key_path))
}

/// Writes a new self-signed identity into `DATA_DIR/tls` as a whole: both
/// files go into a directory of their own that is then renamed into
/// place, so a crash leaves both files or neither.
fn generate(data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.join("tls");
    let staging = data_dir.join("tls.new");
    if staging.exists() {
        // A generation a crash interrupted: never renamed, never used.
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    let key_pem = generated.key_pair.serialize_pem();
    write_synced(&staging.join("key.pem"), key_pem.as_bytes(), 0o600)?;
    // The certificate is public: phones and tools read it to pin it.
    write_synced(
        &staging.join("cert.pem"),
        generated.cert.pem().as_bytes(),
        0o644,
    )?;
    // Replaces an empty `tls` directory, if one is there.
    fs::rename(&staging, &dir)
        .with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", data_dir.display()))?;
    log::info!(
        "generated a self-signed TLS certificate at {}",
        dir.join("cert.pem").display()
    );
    Ok(())
}

/// Creates `path` with permissions `mode`, writes `bytes` and syncs them.
fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(data_dir: &Path) -> anyhow::Result<String> {
        Ok(load_or_generate(None, None, data_dir)?.fingerprint)
    }

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let data_dir = tempfile::tempdir().unwrap();
        let first = fingerprint(data_dir.path()).unwrap();
        assert_eq!(fingerprint(data_dir.path()).unwrap(), first);
        let reloaded = load(None, None, data_dir.path()).unwrap();
        assert_eq!(reloaded.fingerprint, first);
    }

    /// One file of the pair gone is an error at start and at a reload,
    /// and the other file is left as it was.
    #[test]
    fn half_an_identity_is_an_error_not_a_new_identity() {
        for missing in ["key.pem", "cert.pem"] {
            let data_dir = tempfile::tempdir().unwrap();
            fingerprint(data_dir.path()).unwrap();
            let tls = data_dir.path().join("tls");
            let kept = ["key.pem", "cert.pem"].into_iter().find(|f| *f != missing);
            let kept = tls.join(kept.unwrap());
            let before = fs::read(&kept).unwrap();
            fs::remove_file(tls.join(missing)).unwrap();
            let started = fingerprint(data_dir.path()).unwrap_err().to_string();
            assert!(started.contains(missing), "{started}");
            let reloaded = load(None, None, data_dir.path()).err().unwrap();
            assert!(reloaded.to_string().contains(missing), "{reloaded}");
            assert_eq!(fs::read(&kept).unwrap(), before);
            assert!(!tls.join(missing).exists());
        }
    }

    /// A reload finding neither file keeps the identity in use; only a
    /// start makes a new one.
    #[test]
    fn a_reload_never_makes_an_identity() {
        let data_dir = tempfile::tempdir().unwrap();
        let first = fingerprint(data_dir.path()).unwrap();
        fs::remove_dir_all(data_dir.path().join("tls")).unwrap();
        assert!(load(None, None, data_dir.path()).is_err());
        assert!(!data_dir.path().join("tls").exists());
        assert_ne!(fingerprint(data_dir.path()).unwrap(), first);
    }

    /// What a generation a crash interrupted left is not taken for an
    /// identity, and does not stop the next one.
    #[test]
    fn an_interrupted_generation_is_started_over() {
        let data_dir = tempfile::tempdir().unwrap();
        let staging = data_dir.path().join("tls.new");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("key.pem"), "half").unwrap();
        fs::create_dir_all(data_dir.path().join("tls")).unwrap();
        fingerprint(data_dir.path()).unwrap();
        assert!(!staging.exists());
        assert!(load(None, None, data_dir.path()).is_ok());
    }
}
