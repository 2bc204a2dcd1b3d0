//! Node processes: each `qudag-node run` in its own process group, its
//! stdout and stderr in files, killed (the whole group, SIGKILL) when its
//! [`Proc`] is dropped. Every wait is bounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal};

/// How often a bounded wait looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// A running child in its own process group.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    /// Its pid (also its process group id).
    pub pid: u32,
    /// Where its stdout goes.
    pub stdout: PathBuf,
    /// Where its stderr goes.
    pub stderr: PathBuf,
    /// When it was started.
    pub started: Instant,
}

impl Proc {
    /// Starts `cmd` in a new process group with stdout/stderr to `stem.out` / `stem.err`.
    ///
    /// # Errors
    ///
    /// If the files cannot be created or the process not started.
    pub fn spawn(mut cmd: Command, stem: &Path) -> Result<Proc> {
        use std::os::unix::process::CommandExt as _;
        // Appended, not `with_extension`: a stem like `node3.2` keeps its `.2`.
        let stdout = PathBuf::from(format!("{}.out", stem.display()));
        let stderr = PathBuf::from(format!("{}.err", stem.display()));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).context("stdout file")?)
            .stderr(File::create(&stderr).context("stderr file")?)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Proc {
            pid: child.id(),
            child: Some(child),
            stdout,
            stderr,
            started: Instant::now(),
        })
    }

    fn pid(&self) -> Option<Pid> {
        Pid::from_raw(i32::try_from(self.pid).ok()?)
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&self, sig: Signal) {
        if self.child.is_some() {
            if let Some(p) = self.pid() {
                let _ = rustix::process::kill_process(p, sig);
            }
        }
    }

    /// SIGKILL to the whole group, then reaps the child (bounded).
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        if let Some(p) = self.pid() {
            let _ = rustix::process::kill_process_group(p, Signal::KILL);
        }
        self.wait_for(Duration::from_secs(10))
    }

    /// Has it exited? Reaps it if so.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(s)) => {
                self.child = None;
                Some(s)
            }
            _ => None,
        }
    }

    /// Waits up to `d` for it to exit.
    pub fn wait_for(&mut self, d: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + d;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// True until it has been reaped.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// True if its process group still has a member (a leak once reaped).
    pub fn group_alive(&self) -> bool {
        group_alive(self.pid)
    }

    /// The first line of its stdout, once it is written.
    pub fn first_line(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.stdout).ok()?;
        let (line, _) = text.split_once('\n')?;
        Some(line.to_owned())
    }

    /// The last complete line of its stdout.
    pub fn last_line(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.stdout).ok()?;
        text.lines().last().map(str::to_owned)
    }

    /// The last `n` lines of its stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// True if process group `pid` still has a member.
pub fn group_alive(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .is_some_and(|p| rustix::process::test_kill_process_group(p).is_ok())
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.kill9();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_proc_takes_its_group_with_it() {
        let dir = std::env::temp_dir().join(format!("qudag-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sh");
        // A child with a grandchild in the same group; both would sleep a minute.
        cmd.args(["-c", "sleep 60 & echo started; wait"]);
        let p = Proc::spawn(cmd, &dir.join("p")).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while p.first_line().is_none() && Instant::now() < until {
            std::thread::sleep(POLL);
        }
        assert_eq!(p.first_line().as_deref(), Some("started"));
        let pid = p.pid;
        assert!(p.group_alive());
        drop(p);
        let group = Pid::from_raw(pid as i32).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while rustix::process::test_kill_process_group(group).is_ok() && Instant::now() < until {
            std::thread::sleep(POLL);
        }
        assert!(
            rustix::process::test_kill_process_group(group).is_err(),
            "the grandchild is gone too"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
