//! Simulated hosts (a `backend` and an `agent` each) and the `balancer` in
//! front of them: starting them as child processes and writing the
//! balancer's `lb.toml` for a scenario.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use balancer::config::Strategy;

use crate::cgroup::HostCgroup;
use crate::procs::{free_addr, project_cmd, Proc};

/// How long a freshly started process gets to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One simulated host: where its backend and agent listen.
#[derive(Debug, Clone)]
pub struct Host {
    /// The backend's `X-Backend` value, used to attribute responses.
    pub id: String,
    pub backend: SocketAddr,
    pub agent: SocketAddr,
}

impl Host {
    /// A host on loopback address `ip` with free ports for both servers.
    pub fn on(ip: [u8; 4], id: &str) -> Result<Host> {
        Ok(Host {
            id: id.to_string(),
            backend: free_addr(ip)?,
            agent: free_addr(ip)?,
        })
    }
}

/// The processes of the simulated hosts, indexed like the hosts.
#[derive(Debug)]
pub struct Hosts {
    pub hosts: Vec<Host>,
    pub backends: Vec<Proc>,
    pub agents: Vec<Proc>,
}

impl Hosts {
    /// Starts a backend (with `threads` worker threads) and an agent for
    /// every host, each inside its host's cgroup when one is given, and
    /// waits until all of them listen. Logs go to `logs/<id>-*.log`.
    pub async fn start(
        hosts: Vec<Host>,
        threads: usize,
        logs: &Path,
        cgroups: &[HostCgroup],
    ) -> Result<Hosts> {
        let mut backends = Vec::new();
        let mut agents = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let cg = cgroups.get(i);
            backends.push(Self::spawn_backend(h, threads, logs, cg)?);
            let mut cmd = project_cmd("agent")?;
            cmd.arg("--listen").arg(h.agent.to_string());
            cmd.arg("--hostname").arg(&h.id);
            let cmd = wrap(cmd, cg);
            let log = logs.join(format!("{}-agent.log", h.id));
            agents.push(Proc::spawn(&format!("agent {}", h.id), cmd, Some(&log))?);
        }
        for (i, h) in hosts.iter().enumerate() {
            backends[i].wait_listening(h.backend, START_TIMEOUT).await?;
            agents[i].wait_listening(h.agent, START_TIMEOUT).await?;
        }
        Ok(Hosts {
            hosts,
            backends,
            agents,
        })
    }

    fn spawn_backend(
        h: &Host,
        threads: usize,
        logs: &Path,
        cg: Option<&HostCgroup>,
    ) -> Result<Proc> {
        let mut cmd = project_cmd("backend")?;
        cmd.args(["--listen", &h.backend.to_string(), "--id", &h.id])
            .args(["--threads", &threads.to_string()]);
        let log = logs.join(format!("{}-backend.log", h.id));
        Proc::spawn(&format!("backend {}", h.id), wrap(cmd, cg), Some(&log))
    }

    /// Starts host `i`'s backend again after it was killed.
    pub async fn restart_backend(&mut self, i: usize, threads: usize, logs: &Path) -> Result<()> {
        let h = self.hosts[i].clone();
        let mut p = Self::spawn_backend(&h, threads, logs, None)?;
        p.wait_listening(h.backend, START_TIMEOUT).await?;
        self.backends[i] = p;
        Ok(())
    }

    /// Stops all of them in parallel.
    pub fn stop(mut self) {
        let mut all: Vec<Proc> = self
            .backends
            .drain(..)
            .chain(self.agents.drain(..))
            .collect();
        crate::procs::stop_all(&mut all);
    }
}

fn wrap(cmd: Command, cg: Option<&HostCgroup>) -> Command {
    match cg {
        Some(cg) => cg.wrap(&cmd),
        None => cmd,
    }
}

/// The knobs of a generated `lb.toml`.
#[derive(Debug, Clone)]
pub struct LbConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub strategy: &'static str,
    /// `[agent] interval`.
    pub agent_interval: &'static str,
    /// The gzip level, or no compression.
    pub gzip: Option<u32>,
    /// A `[tls]` listener as well as the plain one.
    pub tls: Option<LbTls>,
}

/// The `[tls]` section of a generated `lb.toml`.
#[derive(Debug, Clone)]
pub struct LbTls {
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl LbConfig {
    /// Loopback addresses with free ports, least-loaded, 1 s agent polls.
    pub fn local() -> Result<LbConfig> {
        Ok(LbConfig {
            listen: free_addr([127, 0, 0, 1])?,
            admin: free_addr([127, 0, 0, 1])?,
            strategy: Strategy::LeastLoaded.name(),
            agent_interval: "1s",
            gzip: Some(6),
            tls: None,
        })
    }

    /// The `lb.toml` text for `hosts`.
    pub fn toml(&self, hosts: &[Host]) -> String {
        let mut s = format!("listen = \"{}\"\nbackends = [\n", self.listen);
        for h in hosts {
            let _ = writeln!(
                s,
                "  {{ addr = \"{}\", agent = \"{}\" }},",
                h.backend, h.agent
            );
        }
        let _ = write!(
            s,
            "]\n\n[balance]\nstrategy = \"{}\"\n\n[agent]\ninterval = \"{}\"\n\n\
             [compression]\ngzip = {}\nlevel = {}\n\n[admin]\nlisten = \"{}\"\n",
            self.strategy,
            self.agent_interval,
            self.gzip.is_some(),
            self.gzip.unwrap_or(6),
            self.admin
        );
        if let Some(t) = &self.tls {
            // Debug formatting quotes and escapes the paths as TOML
            // basic strings need (the generated paths are plain).
            let _ = write!(
                s,
                "\n[tls]\nlisten = \"{}\"\ncert = {:?}\nkey = {:?}\n",
                t.listen,
                t.cert.display().to_string(),
                t.key.display().to_string()
            );
        }
        s
    }

    /// Writes the config to `dir/<name>.toml`, starts `balancer` on it with
    /// `threads` worker threads and waits until it listens.
    pub async fn start(
        &self,
        hosts: &[Host],
        threads: usize,
        dir: &Path,
        name: &str,
    ) -> Result<Proc> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, self.toml(hosts))?;
        let mut cmd = project_cmd("balancer")?;
        cmd.arg("-c")
            .arg(&path)
            .args(["--threads", &threads.to_string()]);
        let log = dir.join(format!("{name}.log"));
        let mut p = Proc::spawn(name, cmd, Some(&log))?;
        p.wait_listening(self.listen, START_TIMEOUT).await?;
        p.wait_listening(self.admin, START_TIMEOUT).await?;
        if let Some(t) = &self.tls {
            p.wait_listening(t.listen, START_TIMEOUT).await?;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::{LbConfig, LbTls};

    fn lb() -> LbConfig {
        LbConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin: "127.0.0.1:9090".parse().unwrap(),
            strategy: "least-loaded",
            agent_interval: "1s",
            gzip: None,
            tls: None,
        }
    }

    #[test]
    fn no_tls_section_unless_asked() {
        assert!(!lb().toml(&[]).contains("[tls]"));
    }

    #[test]
    fn tls_section_names_listener_cert_and_key() {
        let cfg = LbConfig {
            tls: Some(LbTls {
                listen: "127.0.0.1:8443".parse().unwrap(),
                cert: "/tmp/run/certs/cert.pem".into(),
                key: "/tmp/run/certs/key.pem".into(),
            }),
            ..lb()
        };
        let toml = cfg.toml(&[]);
        // Last, so that its keys cannot fall into another section.
        let tls = &toml[toml.find("\n[tls]\n").expect("a [tls] section")..];
        assert_eq!(
            tls,
            "\n[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"/tmp/run/certs/cert.pem\"\n\
             key = \"/tmp/run/certs/key.pem\"\n"
        );
        assert!(
            toml.contains("listen = \"127.0.0.1:8080\""),
            "the plain listener stays"
        );
    }
}
