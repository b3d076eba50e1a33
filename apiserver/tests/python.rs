//! The official Python client (PyPI `kubernetes`, installed by scripts/install-deps) lists,
//! watches, creates, patches and deletes pods, services and deployments.

mod support;

use support::{Api, STORES};

#[test]
fn official_python_client_works() {
    for store in STORES {
        let api = Api::start(store);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_client.py");
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg(&api.url)
            .output()
            .expect("python3");
        let text = support::text(&out);
        assert!(
            out.status.success() && text.contains("python client ok"),
            "the Python client failed on {store:?} (is `kubernetes` installed? scripts/install-deps does it):\n{text}\n{}",
            api.logs()
        );
    }
}
