//! Where the configuration comes from, each layer over the one before:
//! the embedded defaults, the TOML file (`--config`), the environment
//! (`ISLE_*`), then the flags. figment puts the layers together and
//! remembers which one each value came from, so a bad value is reported
//! as the file's key, the variable or the flag the operator wrote; then
//! [`Config::validate`] judges the result as one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::{
    providers::{Env, Format, Toml},
    value::{Dict, Map},
    Figment, Metadata, Profile, Provider,
};
use serde::Deserialize;

use super::{flags::Flags, Config, Limits};

/// The prefix of the environment variables that set keys. A section's
/// key is `ISLE_SECTION__KEY` (two underscores between a section and its
/// key: keys have single ones), for example `ISLE_LIMITS__SEND_BURST`.
pub const ENV_PREFIX: &str = "ISLE_";
const ENV_SECTION_SEPARATOR: &str = "__";

/// The configuration the server runs with, and where it came from.
#[derive(Debug)]
pub struct Effective {
    pub config: Config,
    /// The layers read, lowest first, each with what it set: `defaults`,
    /// `file PATH`, `environment ISLE_A ISLE_B`, `flags --x --y`.
    pub layers: Vec<String>,
    /// `ISLE_*` variables that name no section or key of the
    /// configuration (tests and tools use the prefix for their own): not
    /// read, and said so.
    pub ignored: Vec<String>,
}

/// Reads every layer, puts them together and validates the result.
/// Errors name the file and key, the variable or the flag a bad value
/// came from.
pub fn load(flags: &Flags) -> anyhow::Result<Effective> {
    let mut figment = Figment::new();
    let mut layers = vec!["defaults".to_owned()];
    if let Some(path) = &flags.config {
        figment = figment.merge(FileLayer::read(path)?);
        layers.push(format!("file {}", path.display()));
    }
    let env = EnvLayer::new();
    if !env.read.is_empty() {
        layers.push(format!("environment {}", env.read.join(" ")));
    }
    let ignored = env.ignored.clone();
    for name in &ignored {
        log::warn!("{name} names no configuration key: ignored");
    }
    figment = figment.merge(env);
    let flag_layer = flags.layer();
    if !flag_layer.names().is_empty() {
        layers.push(format!("flags {}", flag_layer.names().join(" ")));
    }
    figment = figment.merge(flag_layer);
    let config: Config = figment
        .extract()
        .map_err(|error| anyhow::anyhow!("{}", describe(&figment, error)))?;
    if let Err(error) = config.validate() {
        return Err(
            match error.key().and_then(|key| source_of(&figment, &key)) {
                Some(at) => anyhow::Error::new(error).context(format!("from {at}")),
                None => error.into(),
            },
        );
    }
    Ok(Effective {
        config,
        layers,
        ignored,
    })
}

impl Effective {
    /// The configuration as a TOML file that sets every key to the value
    /// the server runs with (unset options are left out), after comment
    /// lines saying where the values came from.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut text = format!(
            "# isle check-config: the configuration isle runs with\n# layers: {}\n",
            self.layers.join(", then ")
        );
        for name in &self.ignored {
            text += &format!("# ignored: {name} names no configuration key\n");
        }
        if self.config.shards == 0 {
            let shards = self.config.shard_count()?;
            text += &format!("# shards = 0: one per core, {shards} here\n");
        }
        text += &toml::to_string(&self.config).context("writing the configuration as TOML")?;
        Ok(text)
    }
}

/// The config file, read whole and checked on its own first: toml's
/// errors carry the line, and a bad `[limits]` value its key.
struct FileLayer {
    path: PathBuf,
    text: String,
}

impl FileLayer {
    fn read(path: &Path) -> anyhow::Result<FileLayer> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read config {}: {error}", path.display()))?;
        Config::parse(&text)
            .map_err(|error| anyhow::anyhow!("config {}: {error}", path.display()))?;
        Ok(FileLayer {
            path: path.to_owned(),
            text,
        })
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        let path = self.path.display().to_string();
        Metadata::from(format!("config {path}"), self.path.as_path()).interpolater(
            move |_: &Profile, keys: &[&str]| format!("config {path}: {}", keys.join(".")),
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

/// The `ISLE_*` variables that name a section or key of the configuration.
struct EnvLayer {
    env: Env,
    /// The variables read, and those ignored, by name.
    read: Vec<String>,
    ignored: Vec<String>,
}

impl EnvLayer {
    fn new() -> EnvLayer {
        let sections = sections();
        let mut names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| name.to_ascii_uppercase().starts_with(ENV_PREFIX))
            .collect();
        names.sort();
        let (read, ignored) = names
            .into_iter()
            .partition(|name| sections.contains(&section_of(name)));
        let env = Env::prefixed(ENV_PREFIX)
            .split(ENV_SECTION_SEPARATOR)
            .filter(move |key| {
                // Keys are lowered only after this filter.
                let section = key.as_str().split('.').next().unwrap_or_default();
                sections.iter().any(|s| s.eq_ignore_ascii_case(section))
            });
        EnvLayer { env, read, ignored }
    }
}

/// The top-level keys and sections of the configuration: its default
/// written as JSON, where unset options appear too (as null).
fn sections() -> Vec<String> {
    let json = serde_json::to_value(Config::default()).expect("the defaults serialize");
    let object = json.as_object().expect("the configuration is a table");
    object.keys().cloned().collect()
}

/// The top-level key an `ISLE_*` variable names, lower case.
fn section_of(name: &str) -> String {
    let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
    match key.split_once(ENV_SECTION_SEPARATOR) {
        Some((section, _)) => section.to_owned(),
        None => key,
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment").interpolater(|_: &Profile, keys: &[&str]| {
            let name = keys.join(ENV_SECTION_SEPARATOR).to_ascii_uppercase();
            format!("environment variable {ENV_PREFIX}{name}")
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.env.data()
    }
}

/// Each error, with where its value came from (file and key, variable or
/// flag). `[limits]` is read through `#[serde(flatten)]`, which loses the
/// key: the first key there that cannot be read alone is named instead.
fn describe(figment: &Figment, error: figment::Error) -> String {
    let messages: Vec<String> = error
        .into_iter()
        .map(|error| {
            let mut path = error.path.clone();
            if path == ["limits"] {
                if let Some(key) = limits_key_at_fault(figment) {
                    path.push(key);
                }
            }
            let key = path.join(".");
            let at = match figment.find_metadata(&key).or(error.metadata.as_ref()) {
                Some(metadata) => metadata.interpolate(&Profile::Default, &path),
                None => key,
            };
            format!("{at}: {}", error.kind)
        })
        .collect();
    messages.join("; ")
}

/// Where the value of dotted `key` came from, as the operator wrote it:
/// the file and key, the variable or the flag. A flag such as
/// `--test-numbers` sets a whole section, so the closest parent that a
/// layer set counts. `None` for a default.
fn source_of(figment: &Figment, key: &str) -> Option<String> {
    let mut path: Vec<&str> = key.split('.').collect();
    while !path.is_empty() {
        if let Some(metadata) = figment.find_metadata(&path.join(".")) {
            return Some(metadata.interpolate(&Profile::Default, &path));
        }
        path.pop();
    }
    None
}

/// The first key under `limits`, as the layers leave it, that cannot be
/// read on its own.
fn limits_key_at_fault(figment: &Figment) -> Option<String> {
    let limits = figment.find_value("limits").ok()?.into_dict()?;
    limits.into_iter().find_map(|(key, value)| {
        let alone = serde_json::json!({ &key: value });
        Limits::deserialize(alone).is_err().then_some(key)
    })
}
