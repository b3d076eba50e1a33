//! `miniorch/pause`: PID 1 of every pod sandbox, as upstream's `pause.c`. It holds the pod's
//! namespaces open, reaps the zombies re-parented to it, and exits 0 on SIGINT or SIGTERM.
//! Nothing else: it must cost nothing while the pod lives and stop at once when asked.

use miniorch_images::signals::{self, SIGCHLD, SIGINT, SIGTERM, SignalSet};

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => {}
        Some("-v" | "--version") => {
            println!("pause (miniorch) {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some(other) => {
            eprintln!("pause: unknown argument {other:?}\nusage: pause [-v]");
            std::process::exit(2);
        }
    }
    if std::process::id() != 1 {
        eprintln!("Warning: pause should be the first process");
    }
    let set = match SignalSet::block(&[SIGINT, SIGTERM, SIGCHLD]) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("pause: cannot block signals: {e}");
            std::process::exit(1);
        }
    };
    loop {
        match set.wait() {
            Ok(SIGCHLD) => {
                signals::reap_children();
            }
            Ok(signal) => {
                eprintln!("Shutting down, got signal: {}", signals::name(signal));
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("pause: sigwait failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
