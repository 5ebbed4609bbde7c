//! `Binaries`: the `isle` and `loadgen` executables a harness test runs,
//! built once per process into the target directory the test itself was
//! built in.
//!
//! `env!("CARGO_BIN_EXE_isle")` only exists in the server's own tests, so
//! a test in `ci` asks cargo: `cargo build -p server -p loadgen --bins`
//! with the target directory and profile read off the test's own path
//! (`<target>/<profile>/deps/<test>`). When they are up to date that is a
//! second of cargo checking freshness; when not, the test waits for the
//! build rather than running yesterday's binaries.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
};

use super::Error;

/// Set to a directory holding `isle` and `loadgen` to use those instead
/// of building (a release build, an installed package).
const BIN_DIR_ENV: &str = "ISLE_BIN_DIR";

static BUILT: Mutex<Option<&'static Binaries>> = Mutex::new(None);

/// Paths of the executables the harness starts.
#[derive(Debug)]
pub struct Binaries {
    /// The server.
    pub isle: PathBuf,
    /// The load generator.
    pub loadgen: PathBuf,
}

impl Binaries {
    /// The binaries of this workspace, built on the first call in a
    /// process (tests running in parallel wait for that one build), or
    /// those in `$ISLE_BIN_DIR`. Errors: the build failed, or a binary is
    /// missing.
    pub fn get() -> Result<&'static Binaries, Error> {
        let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(binaries) = *built {
            return Ok(binaries);
        }
        let dir = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => build()?,
        };
        let binaries = Binaries {
            isle: dir.join("isle"),
            loadgen: dir.join("loadgen"),
        };
        for path in [&binaries.isle, &binaries.loadgen] {
            if !path.is_file() {
                let what = format!("looking for {}", path.display());
                return Err(Error::io(what)(std::io::ErrorKind::NotFound.into()));
            }
        }
        Ok(*built.insert(Box::leak(Box::new(binaries))))
    }
}

/// The directory of this executable's profile (`<target>/debug`, say),
/// read off its own path (`<target>/<profile>/deps/<test>`).
fn profile_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(Error::io("finding the running executable"))?;
    let mut profile_dir = exe.parent().unwrap_or(Path::new("/"));
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().unwrap_or(profile_dir);
    }
    Ok(profile_dir.to_owned())
}

/// The target directory the running test was built in: where a
/// benchmark writes its results (`target/cluster-bench.json`, say), also
/// under `CARGO_TARGET_DIR`.
pub fn target_dir() -> Result<PathBuf, Error> {
    let profile_dir = profile_dir()?;
    Ok(profile_dir.parent().unwrap_or(&profile_dir).to_owned())
}

/// Builds the server and loadgen with this executable's profile into its
/// target directory, and returns the directory the binaries are in.
fn build() -> Result<PathBuf, Error> {
    let profile_dir = profile_dir()?;
    let profile_dir = profile_dir.as_path();
    let profile = profile_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = profile_dir.parent().unwrap_or(profile_dir);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ci lives in the workspace");
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .args(["build", "-p", "server", "-p", "loadgen", "--bins"])
        .args(match profile.as_str() {
            "debug" => vec![],
            "release" => vec!["--release".to_owned()],
            other => vec!["--profile".to_owned(), other.to_owned()],
        })
        .env("CARGO_TARGET_DIR", target)
        .current_dir(workspace);
    without_package_env(&mut command);
    let described = format!("{command:?}");
    // Its progress and errors go straight to the terminal: libtest does
    // not capture a child's output, and a build can take minutes.
    let status = command.status().map_err(Error::io("running cargo"))?;
    if !status.success() {
        return Err(Error::Command {
            command: described,
            status,
            stderr: "(cargo's output is above)".to_owned(),
        });
    }
    Ok(profile_dir.to_owned())
}

/// Removes from `command`'s environment what cargo sets for the package
/// it runs (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). Some build scripts
/// (ring's) are rerun when one of these changes, so a cargo started with
/// them rebuilds ring and all above it, and the next build from a shell
/// rebuilds it back.
pub fn without_package_env(command: &mut Command) {
    const SET_BY_CARGO: [&str; 7] = [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if SET_BY_CARGO.iter().any(|prefix| text.starts_with(prefix)) {
            command.env_remove(&name);
        }
    }
}
