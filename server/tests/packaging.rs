//! What can be checked here of `packaging/`: the sample configuration
//! passes `isle check-config`, the systemd unit parses (with
//! `systemd-analyze verify`, where it exists) and asks for what the
//! server needs, and the Debian package description names files that
//! exist.

use std::{path::PathBuf, process::Command};

fn packaging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

#[test]
fn the_sample_config_passes_check_config() {
    let sample = packaging().join("isle.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["check-config", "--config"])
        .arg(&sample)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("# layers: defaults, then file "),
        "{stdout}"
    );
}

#[test]
fn the_unit_asks_for_limits_restarts_reload_and_a_sandbox() {
    let unit = std::fs::read_to_string(packaging().join("isle.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/isle --config /etc/isle/isle.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "LimitNOFILE=",
        "LimitMEMLOCK=infinity",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=isle",
        "ReadWritePaths=/var/lib/isle",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "isle.service has no {line}"
        );
    }
}

#[test]
fn the_unit_parses_with_systemd_analyze_verify() {
    let Some(systemd_analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("note: systemd-analyze not found (package systemd): the unit was not verified");
        return;
    };
    verify_unit(&systemd_analyze, |unit| unit);
}

/// Runs `systemd-analyze verify` on the packaged unit as `change` makes
/// it, the binary pointed at the one just built (verify checks that the
/// binaries exist), and fails on any line about the unit: unknown keys and
/// bad values are warnings, not a failed exit.
fn verify_unit(systemd_analyze: &std::path::Path, change: impl FnOnce(String) -> String) {
    let unit = std::fs::read_to_string(packaging().join("isle.service")).unwrap();
    let unit = change(unit.replace("/usr/bin/isle", env!("CARGO_BIN_EXE_isle")));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isle.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new(systemd_analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let about_the_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("isle.service"))
        .collect();
    assert!(
        output.status.success() && about_the_unit.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_debian_package_description_names_files_that_exist() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo: toml::Table =
        toml::from_str(&std::fs::read_to_string(manifest.join("Cargo.toml")).unwrap()).unwrap();
    let deb = &cargo["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let sources: Vec<&str> = assets.iter().map(|a| a[0].as_str().unwrap()).collect();
    assert!(sources.contains(&"target/release/isle"), "{sources:?}");
    for source in sources.iter().filter(|s| !s.starts_with("target/")) {
        assert!(manifest.join(source).exists(), "{source} does not exist");
    }
    let units = &deb["systemd-units"];
    let scripts = manifest.join(units["unit-scripts"].as_str().unwrap());
    let name = units["unit-name"].as_str().unwrap();
    assert!(scripts.join(format!("{name}.service")).exists());
    assert_eq!(deb["conf-files"][0].as_str(), Some("/etc/isle/isle.toml"));
}

/// The TLS recipe in the unit's comments, as lines of a drop-in: the
/// `LoadCredential=` lines and the `Environment=` line that points the
/// server at them.
fn credentials_recipe() -> Vec<String> {
    let unit = std::fs::read_to_string(packaging().join("isle.service")).unwrap();
    let recipe: Vec<String> = unit
        .lines()
        .filter_map(|line| line.strip_prefix("#   "))
        .filter(|line| {
            line.starts_with("LoadCredential=cert.pem:")
                || line.starts_with("LoadCredential=key.pem:")
                || line.starts_with("Environment=ISLE_TLS__CERT=")
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(recipe.len(), 3, "the unit's TLS recipe: {recipe:?}");
    recipe
}

/// The recipe's `Environment=` line as the service sees it: `%d` is the
/// credentials directory, here `credentials`.
fn recipe_environment(credentials: &std::path::Path) -> Vec<(String, String)> {
    let line = credentials_recipe()
        .into_iter()
        .find_map(|line| line.strip_prefix("Environment=").map(str::to_owned))
        .unwrap();
    line.split_whitespace()
        .map(|assignment| {
            let (name, value) = assignment.split_once('=').unwrap();
            let value = value.replace("%d", credentials.to_str().unwrap());
            (name.to_owned(), value)
        })
        .collect()
}

/// The unit with the TLS recipe in force still parses.
#[test]
fn the_unit_with_its_credentials_recipe_parses() {
    let Some(systemd_analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("note: systemd-analyze not found (package systemd): the recipe was not verified");
        return;
    };
    let recipe = credentials_recipe().join("\n");
    verify_unit(&systemd_analyze, |unit| {
        unit.replace("[Service]\n", &format!("[Service]\n{recipe}\n"))
    });
}

/// What systemd hands the service under the recipe: read-only copies of
/// the certificate and key in a directory of their own, named by the
/// recipe's environment. `check-config` (the unit's ExecStartPre) reads
/// them as the server does and names the identity, and the server serves
/// it; without the files, `check-config` fails, as the start would.
#[test]
fn the_credentials_recipe_gives_the_server_its_identity() {
    let credentials = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let identity = rcgen::generate_simple_self_signed(names).unwrap();
    for (name, pem) in [
        ("cert.pem", identity.cert.pem()),
        ("key.pem", identity.key_pair.serialize_pem()),
    ] {
        let path = credentials.path().join(name);
        std::fs::write(&path, pem).unwrap();
        let read_only = std::os::unix::fs::PermissionsExt::from_mode(0o400);
        std::fs::set_permissions(&path, read_only).unwrap();
    }
    let environment = recipe_environment(credentials.path());
    let check = |environment: &[(String, String)]| {
        Command::new(env!("CARGO_BIN_EXE_isle"))
            .args(["check-config", "--config"])
            .arg(packaging().join("isle.toml"))
            .envs(environment.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    let output = check(&environment);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cert = credentials.path().join("cert.pem");
    let tls_line = stdout
        .lines()
        .find(|line| line.starts_with("# tls: "))
        .unwrap_or_else(|| panic!("no tls line: {stdout}"));
    assert!(tls_line.contains(cert.to_str().unwrap()), "{tls_line}");
    assert!(tls_line.contains("fingerprint "), "{tls_line}");
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["--data-dir", data_dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let tls: std::net::SocketAddr = ready
        .split_whitespace()
        .find_map(|field| field.strip_prefix("tls="))
        .unwrap_or_else(|| panic!("no ready line: {ready:?}"))
        .parse()
        .unwrap();
    let served = loadgen::client::Client::connect_tls(tls, Some(&cert));
    let _ = server.kill();
    let _ = server.wait();
    assert!(served.is_ok(), "the credential's certificate is not served");
    std::fs::remove_file(credentials.path().join("key.pem")).unwrap();
    let output = check(&environment);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "check-config passed without the key"
    );
    assert!(stderr.contains("key.pem"), "{stderr}");
}
