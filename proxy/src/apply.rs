//! Applying rules: the narrow [`Iptables`] trait (the real commands, optionally inside a
//! network namespace, or a recording fake in tests) and [`sync`], which lists the proxy's
//! existing chains, applies the rendered rules in one atomic `iptables-restore --noflush` and
//! makes sure the built-in chains jump into them. The host's own chains are never flushed or
//! rewritten: only jump rules are added to them, each once.

use std::collections::BTreeSet;
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::model::ServicePort;
use crate::render::{self, JUMP_RULES, JumpRule, NodeConfig};

/// Why rules could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The program could not be started (not installed, not allowed).
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// The few iptables operations the proxy needs.
#[async_trait]
pub trait Iptables: Send + Sync {
    /// Feeds `input` to `iptables-restore --noflush` (one atomic transaction).
    async fn restore(&self, input: &str) -> Result<(), ApplyError>;
    /// The names of the chains in `table`.
    async fn chains(&self, table: &str) -> Result<BTreeSet<String>, ApplyError>;
    /// Whether `rule` is in place.
    async fn has_rule(&self, rule: &JumpRule) -> Result<bool, ApplyError>;
    /// Puts `rule` first in its chain.
    async fn insert_rule(&self, rule: &JumpRule) -> Result<(), ApplyError>;
    /// Removes one copy of `rule`.
    async fn delete_rule(&self, rule: &JumpRule) -> Result<(), ApplyError>;
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Lines of `iptables-restore` input applied.
    pub lines: usize,
    /// Jump rules that were missing and were added.
    pub jumps_added: usize,
}

/// Brings the tables in line with `ports`: one restore, then any missing jump rules.
pub async fn sync(
    ipt: &dyn Iptables,
    ports: &[ServicePort],
    node: &NodeConfig,
) -> Result<SyncReport, ApplyError> {
    let existing = ipt.chains("nat").await?;
    let input = render::render(ports, node, &existing);
    ipt.restore(&input).await?;
    // After the restore, so the chains the jumps name exist.
    let mut jumps_added = 0;
    for rule in &JUMP_RULES {
        if !ipt.has_rule(rule).await? {
            ipt.insert_rule(rule).await?;
            jumps_added += 1;
        }
    }
    Ok(SyncReport {
        lines: input.lines().count(),
        jumps_added,
    })
}

/// Removes every jump into the proxy's chains, then the chains (upstream's `--cleanup`).
pub async fn cleanup(ipt: &dyn Iptables) -> Result<(), ApplyError> {
    for rule in &JUMP_RULES {
        // A rule added twice (by hand, or an older proxy) goes too; bounded in case a broken
        // iptables always answers "present".
        for _ in 0..16 {
            if !ipt.has_rule(rule).await? {
                break;
            }
            ipt.delete_rule(rule).await?;
        }
    }
    let filter = ipt.chains("filter").await?;
    let nat = ipt.chains("nat").await?;
    ipt.restore(&render::render_cleanup(&filter, &nat)).await
}

/// The real `iptables`, `iptables-save` and `iptables-restore`, run directly or with
/// `ip netns exec NAME` (tests keep the host's tables out of reach that way).
#[derive(Debug, Clone, Default)]
pub struct Commands {
    /// The network namespace to run in (`None`: the process's own).
    pub netns: Option<String>,
    /// The `iptables` program (its `-save`/`-restore` siblings are named after it).
    pub iptables: Option<String>,
}

impl Commands {
    fn program(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.iptables.as_deref().unwrap_or("iptables"))
    }

    fn command(&self, program: &str, args: &[&str]) -> (Command, String) {
        let mut shown = vec![program.to_string()];
        shown.extend(args.iter().map(|a| a.to_string()));
        let cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]).args(args);
                shown.splice(0..0, ["ip", "netns", "exec", ns].map(String::from));
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        (cmd, shown.join(" "))
    }

    /// Runs a command to completion with `stdin`, returning its output or why it failed.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<std::process::Output, ApplyError> {
        let (mut cmd, shown) = self.command(program, args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let spawn_err = |source| ApplyError::Spawn {
            program: shown.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await.map_err(spawn_err)?;
            // Dropping the pipe closes it: the program sees the end of its input.
        }
        child.wait_with_output().await.map_err(spawn_err)
    }

    fn check(shown: String, out: std::process::Output) -> Result<std::process::Output, ApplyError> {
        if out.status.success() {
            return Ok(out);
        }
        Err(ApplyError::Failed {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    async fn iptables(
        &self,
        table: &str,
        op: &str,
        rule: &JumpRule,
    ) -> Result<std::process::Output, ApplyError> {
        let program = self.program("");
        let rule_args = rule.args();
        let mut args = vec!["-w", "5", "-t", table, op, rule.chain];
        args.extend(rule_args.iter().map(String::as_str));
        self.run(&program, &args, None).await
    }
}

#[async_trait]
impl Iptables for Commands {
    async fn restore(&self, input: &str) -> Result<(), ApplyError> {
        let program = self.program("-restore");
        let args = ["-w", "5", "--noflush"];
        let out = self.run(&program, &args, Some(input)).await?;
        Self::check(format!("{program} --noflush"), out).map(|_| ())
    }

    async fn chains(&self, table: &str) -> Result<BTreeSet<String>, ApplyError> {
        let program = self.program("-save");
        let out = self.run(&program, &["-t", table], None).await?;
        let out = Self::check(format!("{program} -t {table}"), out)?;
        Ok(parse_chains(&String::from_utf8_lossy(&out.stdout)))
    }

    async fn has_rule(&self, rule: &JumpRule) -> Result<bool, ApplyError> {
        let out = self.iptables(rule.table, "-C", rule).await?;
        // iptables -C exits 1 when the rule (or the chain it names) is missing.
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(ApplyError::Failed {
                command: format!("iptables -t {} -C {}", rule.table, rule.chain),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
        }
    }

    async fn insert_rule(&self, rule: &JumpRule) -> Result<(), ApplyError> {
        let out = self.iptables(rule.table, "-I", rule).await?;
        Self::check(
            format!(
                "iptables -t {} -I {} ... -j {}",
                rule.table, rule.chain, rule.target
            ),
            out,
        )
        .map(|_| ())
    }

    async fn delete_rule(&self, rule: &JumpRule) -> Result<(), ApplyError> {
        let out = self.iptables(rule.table, "-D", rule).await?;
        Self::check(
            format!(
                "iptables -t {} -D {} ... -j {}",
                rule.table, rule.chain, rule.target
            ),
            out,
        )
        .map(|_| ())
    }
}

/// Chain names from `iptables-save` output (`:NAME POLICY [packets:bytes]` lines).
pub fn parse_chains(save: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording stand-in for iptables.

    use std::sync::Mutex;

    use super::*;

    /// Remembers restores and jump rules; chains come from the last restore's declarations.
    #[derive(Default)]
    pub struct FakeIptables {
        pub restores: Mutex<Vec<String>>,
        pub jumps: Mutex<Vec<JumpRule>>,
        pub chains: Mutex<BTreeSet<String>>,
        pub fail_restore: Mutex<Option<String>>,
    }

    #[async_trait]
    impl Iptables for FakeIptables {
        async fn restore(&self, input: &str) -> Result<(), ApplyError> {
            if let Some(err) = self.fail_restore.lock().unwrap().clone() {
                return Err(ApplyError::Failed {
                    command: "iptables-restore".into(),
                    status: "exit status: 1".into(),
                    stderr: err,
                });
            }
            self.restores.lock().unwrap().push(input.to_string());
            let mut chains = self.chains.lock().unwrap();
            chains.extend(parse_chains(input));
            for l in input.lines() {
                if let Some(c) = l.strip_prefix("-X ") {
                    chains.remove(c);
                }
            }
            Ok(())
        }
        async fn chains(&self, _table: &str) -> Result<BTreeSet<String>, ApplyError> {
            Ok(self.chains.lock().unwrap().clone())
        }
        async fn has_rule(&self, rule: &JumpRule) -> Result<bool, ApplyError> {
            Ok(self.jumps.lock().unwrap().contains(rule))
        }
        async fn insert_rule(&self, rule: &JumpRule) -> Result<(), ApplyError> {
            self.jumps.lock().unwrap().insert(0, *rule);
            Ok(())
        }
        async fn delete_rule(&self, rule: &JumpRule) -> Result<(), ApplyError> {
            let mut jumps = self.jumps.lock().unwrap();
            if let Some(i) = jumps.iter().position(|r| r == rule) {
                jumps.remove(i);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeIptables;
    use super::*;
    use crate::model::{self, testing::*};

    fn node() -> NodeConfig {
        NodeConfig {
            node_name: "n1".into(),
            cluster_cidr: None,
            masquerade_all: false,
        }
    }

    #[test]
    fn chains_are_read_from_iptables_save() {
        let save = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        assert_eq!(
            parse_chains(save),
            ["KUBE-SVC-X", "PREROUTING"].map(String::from).into()
        );
    }

    #[tokio::test]
    async fn sync_installs_jumps_once_and_deletes_stale_chains() {
        let ipt = FakeIptables::default();
        let services = [svc("ns1", "a", "10.96.0.1").port("p", "TCP", 80)];
        let slices = [slice("ns1", "a", "p", "TCP", 80).ep("10.244.0.5", "n1")];
        let m = model::build(&services, &slices, "n1");
        let first = sync(&ipt, &m.ports, &node()).await.unwrap();
        assert_eq!(first.jumps_added, JUMP_RULES.len());
        assert!(
            ipt.chains
                .lock()
                .unwrap()
                .iter()
                .any(|c| c.starts_with("KUBE-SEP-"))
        );

        // The service goes away: its chains are deleted, the jumps are not added again.
        let second = sync(&ipt, &[], &node()).await.unwrap();
        assert_eq!(second.jumps_added, 0);
        assert_eq!(ipt.jumps.lock().unwrap().len(), JUMP_RULES.len());
        let last = ipt.restores.lock().unwrap().last().unwrap().clone();
        assert!(last.contains("-X KUBE-SEP-"), "{last}");
        assert!(
            !ipt.chains
                .lock()
                .unwrap()
                .iter()
                .any(|c| c.starts_with("KUBE-SEP-") || c.starts_with("KUBE-SVC-"))
        );
    }

    #[tokio::test]
    async fn a_failed_restore_is_reported_and_adds_no_jumps() {
        let ipt = FakeIptables::default();
        *ipt.fail_restore.lock().unwrap() = Some("line 7 failed".into());
        let err = sync(&ipt, &[], &node()).await.unwrap_err();
        assert!(err.to_string().contains("line 7 failed"), "{err}");
        assert!(ipt.jumps.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn cleanup_removes_jumps_then_chains() {
        let ipt = FakeIptables::default();
        sync(&ipt, &[], &node()).await.unwrap();
        cleanup(&ipt).await.unwrap();
        assert!(ipt.jumps.lock().unwrap().is_empty());
        assert!(
            ipt.chains.lock().unwrap().is_empty(),
            "{:?}",
            ipt.chains.lock().unwrap()
        );
    }
}
