// SPDX-License-Identifier: MPL-2.0

//! Builds the plugin through the meson wrapper (meson.build), installs it
//! with `DESTDIR` and checks that GStreamer loads the installed file.
//!
//! Needs meson, ninja, pkg-config and gst-inspect-1.0 (`scripts/deps.sh`
//! installs them). The cargo build that meson runs shares this crate's target
//! directory, so after a `cargo build --release` it only relinks or does
//! nothing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PLUGIN_NAME: &str = "analyticsmqtt";
const PLUGIN_FILE: &str = "libgstanalyticsmqtt.so";
/// Elements the installed plugin must register.
const ELEMENTS: &[&str] = &["metafilter", "metareplay", "mqttpublish"];

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory of this crate, where `cargo build --release`
/// leaves its cache.
fn cargo_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => repo_dir().join(dir),
        _ => repo_dir().join("target"),
    }
}

/// An empty scratch directory for one test, under cargo's test tmp dir.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("meson-install-{name}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn require_tool(tool: &str) {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "`{tool}` not found: run scripts/deps.sh to install the build and test dependencies"
    );
}

/// A command without the variables `cargo test` sets for test processes
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). Some build scripts watch them
/// (ring reruns when `CARGO_MANIFEST_DIR` changes), so leaving them in would
/// make the cargo build run by meson differ from a plain `cargo build
/// --release` and rebuild half the dependency tree every time.
fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo_test = key == "CARGO"
            || key == "OUT_DIR"
            || key.starts_with("CARGO_PKG_")
            || matches!(
                &*key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            );
        if set_by_cargo_test {
            cmd.env_remove(&*key);
        }
    }
    // cargo test also puts target/<profile> on the library path, where a
    // libgstanalyticsmqtt.so lies: gst-inspect-1.0 must not find that one
    // when it is given a bare file name.
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        let target = cargo_target_dir();
        let kept: Vec<PathBuf> = std::env::split_paths(&paths)
            .filter(|p| !p.starts_with(&target))
            .collect();
        cmd.env("LD_LIBRARY_PATH", std::env::join_paths(kept).unwrap());
    }
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    // Only the variables set for this command, not the ones removed.
    for (key, value) in cmd.get_envs() {
        if key == "LD_LIBRARY_PATH" {
            continue;
        }
        if let Some(value) = value {
            s.push_str(&format!(
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd`, returns its output; panics with everything it printed if it fails.
fn run(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    eprintln!("+ {what}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run `{what}`: {e}"));
    assert!(
        out.status.success(),
        "`{what}` failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `DESTDIR` + an absolute install path.
fn staged(destdir: &Path, installed: &Path) -> PathBuf {
    destdir.join(installed.strip_prefix("/").unwrap_or(installed))
}

/// Configures, builds and installs into `destdir`; returns the plugin's
/// install path as meson reports it (without `destdir`).
fn meson_install(work: &Path, prefix: &str, destdir: &Path) -> PathBuf {
    require_tool("meson");
    require_tool("ninja");
    let build = work.join("build");

    let mut setup = command("meson");
    setup
        .arg("setup")
        .arg(&build)
        .arg(repo_dir())
        .arg(format!("--prefix={prefix}"))
        .arg(format!(
            "-Dcargo_target_dir={}",
            cargo_target_dir().display()
        ));
    run(&mut setup);
    run(command("meson").arg("compile").arg("-C").arg(&build));
    // meson.build's own check: gst-inspect-1.0 loads the built file.
    run(command("meson")
        .arg("test")
        .arg("-C")
        .arg(&build)
        .arg("--print-errorlogs"));
    run(command("meson")
        .arg("install")
        .arg("-C")
        .arg(&build)
        .env("DESTDIR", destdir));

    // Where meson says it installed the plugin.
    let out = run(command("meson")
        .arg("introspect")
        .arg(&build)
        .arg("--installed"));
    let installed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("meson introspect --installed prints JSON");
    let paths: Vec<PathBuf> = installed
        .values()
        .filter_map(|v| v.as_str())
        .map(PathBuf::from)
        .filter(|p| p.file_name() == Some(OsStr::new(PLUGIN_FILE)))
        .collect();
    assert_eq!(
        paths.len(),
        1,
        "meson installs exactly one {PLUGIN_FILE}, got {installed:?}"
    );
    let path = paths.into_iter().next().unwrap();

    assert!(
        path.starts_with(prefix),
        "{} is not under the prefix {prefix}",
        path.display()
    );
    assert_eq!(
        path.parent().and_then(Path::file_name),
        Some(OsStr::new("gstreamer-1.0")),
        "plugin must go into <libdir>/gstreamer-1.0, got {}",
        path.display()
    );
    let file = staged(destdir, &path);
    let size = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("installed plugin {} missing: {e}", file.display()))
        .len();
    assert!(size > 0, "installed plugin {} is empty", file.display());
    path
}

/// gst-inspect-1.0 with a throwaway registry, no system plugins and
/// `plugin_path` (if any) as the only plugin directory.
fn gst_inspect(registry: &Path, plugin_path: Option<&Path>) -> Command {
    let mut cmd = command("gst-inspect-1.0");
    cmd.env("GST_REGISTRY_1_0", registry)
        .env("GST_REGISTRY", registry)
        .env("GST_PLUGIN_SYSTEM_PATH_1_0", "")
        .env("GST_PLUGIN_SYSTEM_PATH", "")
        .env_remove("GST_PLUGIN_PATH_1_0")
        .env_remove("GST_PLUGIN_PATH");
    if let Some(dir) = plugin_path {
        cmd.env("GST_PLUGIN_PATH", dir);
    }
    cmd
}

/// The value of a `  Key   value` line of gst-inspect-1.0's output.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(key)?;
        rest.starts_with(char::is_whitespace).then(|| rest.trim())
    })
}

fn check_loads(work: &Path, installed: &Path) {
    require_tool("gst-inspect-1.0");
    let dir = installed.parent().unwrap();

    // By file name.
    let out = run(gst_inspect(&work.join("registry-file.bin"), None).arg(installed));
    let text = stdout(&out);
    assert_eq!(field(&text, "Name"), Some(PLUGIN_NAME), "{text}");
    for element in ELEMENTS {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{element}:"))),
            "plugin does not list element {element}:\n{text}"
        );
    }

    // By element and plugin name, found through GST_PLUGIN_PATH alone.
    let registry = work.join("registry-path.bin");
    for element in ELEMENTS {
        let out = run(gst_inspect(&registry, Some(dir)).arg(element));
        let text = stdout(&out);
        assert_eq!(
            field(&text, "Filename").map(Path::new),
            Some(installed),
            "{element} must come from the installed plugin:\n{text}"
        );
    }
    let out = run(gst_inspect(&registry, Some(dir)).arg(PLUGIN_NAME));
    assert_eq!(field(&stdout(&out), "Name"), Some(PLUGIN_NAME));
    assert!(
        registry.exists(),
        "GST_REGISTRY was not honoured; the user registry may have been written"
    );

    // The check above is not vacuous: without the directory there is no element.
    let empty = work.join("empty-plugin-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let out = gst_inspect(&work.join("registry-empty.bin"), Some(&empty))
        .arg(ELEMENTS[0])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{} found without the plugin directory",
        ELEMENTS[0]
    );
}

#[test]
fn install_into_temporary_prefix_and_load() {
    let work = scratch_dir("tmp-prefix");
    let prefix = work.join("prefix");
    let destdir = work.join("destdir");
    let installed = meson_install(&work, prefix.to_str().unwrap(), &destdir);
    check_loads(&work, &staged(&destdir, &installed));
}

/// With `--prefix=/usr` the plugin lands in GStreamer's own plugin directory,
/// so it is found without GST_PLUGIN_PATH.
#[test]
fn usr_prefix_installs_into_gstreamer_plugin_dir() {
    require_tool("pkg-config");
    let work = scratch_dir("usr-prefix");
    let destdir = work.join("destdir");
    let installed = meson_install(&work, "/usr", &destdir);

    let out = run(command("pkg-config")
        .arg("--variable=pluginsdir")
        .arg("gstreamer-1.0"));
    let pluginsdir = PathBuf::from(stdout(&out).trim());
    assert_eq!(installed, pluginsdir.join(PLUGIN_FILE));
    check_loads(&work, &staged(&destdir, &installed));
}
