//! The Python client's own test suite (clients/python/tests), run against a
//! real `docket serve`, with stubs generated from proto/ for this run. The log
//! starts with clients/python/tests/policy.toml as its genesis policy, which
//! the governance tests (tests/test_governance.py) rely on.

use std::path::Path;
use std::process::Command;

use crate::common::{BIN, spawn_serve};

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (is python3 installed?)"));
    assert!(
        out.status.success(),
        "{what} failed (install the client's dependencies with \
         `python3 -m pip install -r clients/python/requirements.txt`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_client_suite_passes_against_a_real_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let client_dir = root.join("clients/python");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run(
        Command::new(BIN)
            .args(["init", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .arg("--policy")
            .arg(client_dir.join("tests/policy.toml")),
        "docket init",
    );
    let (server, addr) = spawn_serve(&data);
    let _server = KillOnDrop(server);
    let generated = dir.path().join("gen");
    run(
        Command::new("python3")
            .args(["-m", "docket_client.generate"])
            .arg(&generated)
            .env("PYTHONPATH", &client_dir),
        "generating the Python stubs from proto/",
    );
    let pythonpath = format!("{}:{}", generated.display(), client_dir.display());
    run(
        Command::new("python3")
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(client_dir.join("tests"))
            .env("PYTHONPATH", pythonpath)
            .env("DOCKET_TEST_SERVER", addr.to_string())
            .env("DOCKET_TEST_DATA", &data),
        "the Python client's tests",
    );
}

/// Stops the server however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
