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
        "Restart=on-failure",
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
    // verify also checks that the binaries exist: point it at the one
    // just built instead of /usr/bin/isle.
    let unit = std::fs::read_to_string(packaging().join("isle.service")).unwrap();
    let unit = unit.replace("/usr/bin/isle", env!("CARGO_BIN_EXE_isle"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isle.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new(systemd_analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Unknown keys and bad values are warnings, not a failed exit: any
    // line about the unit is a failure here.
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
