//! The proxies compared side by side: ours, nginx and HAProxy, each with a
//! generated configuration in a directory under the scenario's results,
//! one worker unless [`Opts::workers`] says more, loopback only, keep-alive to the backends (nginx
//! `upstream keepalive` + HTTP/1.1 with `Connection ""`, HAProxy
//! `http-reuse always`), plus "direct" (the load straight to one backend,
//! the ceiling).
//!
//! With [`Opts::tls`] each proxy also listens with TLS on a second port
//! ([`Proxy::tls`]): our balancer's `[tls]`, nginx's `listen … ssl http2`,
//! HAProxy's `bind … ssl crt … alpn h2,http/1.1`; the same certificate, the
//! same backends, each TLS library's defaults otherwise.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::certs::CertFiles;
use crate::cluster::{Host, LbConfig, LbTls, START_TIMEOUT};
use crate::procs::{free_addr, system_bin, Proc};

/// What nginx/HAProxy need to be installed.
pub const INSTALL_HINT: &str = "install with: apt-get install nginx haproxy wrk";

/// A load target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Nginx,
    Haproxy,
    /// Straight to the first backend: no proxy.
    Direct,
}

impl Kind {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "balancer",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Direct => "direct",
        }
    }
}

/// Settings shared by all proxies of a run.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// gzip at this level for compressible types of at least 1 KiB; off
    /// when `None`. (HAProxy compresses at its `tune.comp.maxlevel`.)
    pub gzip: Option<u32>,
    /// Workers per proxy: our balancer's `--threads`, nginx's
    /// `worker_processes`, HAProxy's `nbthread`. 0 counts as 1, so the
    /// default is one worker.
    pub workers: usize,
    /// Also listen with TLS, with this certificate (not for `direct`: the
    /// backends speak plain HTTP).
    pub tls: Option<CertFiles>,
}

impl Opts {
    /// [`Opts::workers`], at least 1.
    pub fn workers(&self) -> usize {
        self.workers.max(1)
    }
}

/// A started proxy (or the direct target).
#[derive(Debug)]
pub struct Proxy {
    pub kind: Kind,
    /// Plain HTTP.
    pub addr: SocketAddr,
    /// The TLS listener, with [`Opts::tls`].
    pub tls: Option<SocketAddr>,
    /// `None` for [`Kind::Direct`].
    pub proc: Option<Proc>,
}

/// Starts `kind` in front of `hosts`, or says why it is skipped
/// (`Ok(Err(reason))`) when its program is not installed.
pub async fn start(
    kind: Kind,
    hosts: &[Host],
    dir: &Path,
    opts: Opts,
) -> Result<Result<Proxy, String>> {
    let dir = dir.join(kind.name());
    std::fs::create_dir_all(&dir)?;
    let addr = free_addr([127, 0, 0, 1])?;
    let tls = match (&opts.tls, kind) {
        (Some(_), Kind::Ours | Kind::Nginx | Kind::Haproxy) => Some(free_addr([127, 0, 0, 1])?),
        _ => None,
    };
    let mut proc = match kind {
        Kind::Direct => {
            return Ok(Ok(Proxy {
                kind,
                addr: hosts[0].backend,
                tls: None,
                proc: None,
            }))
        }
        Kind::Ours => {
            let lb = LbConfig {
                listen: addr,
                gzip: opts.gzip,
                tls: opts.tls.as_ref().zip(tls).map(|(c, listen)| LbTls {
                    listen,
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                }),
                ..LbConfig::local()?
            };
            let p = lb.start(hosts, opts.workers(), &dir, "balancer").await?;
            return Ok(Ok(Proxy {
                kind,
                addr,
                tls,
                proc: Some(p),
            }));
        }
        Kind::Nginx => {
            let Some(bin) = system_bin("nginx") else {
                return Ok(Err(format!(
                    "nginx skipped: not installed ({INSTALL_HINT})"
                )));
            };
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(addr, tls, hosts, &dir, &opts))?;
            let mut cmd = Command::new(bin);
            cmd.arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"));
            Proc::spawn("nginx", cmd, Some(&dir.join("stderr.log")))?
        }
        Kind::Haproxy => {
            let Some(bin) = system_bin("haproxy") else {
                return Ok(Err(format!(
                    "haproxy skipped: not installed ({INSTALL_HINT})"
                )));
            };
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_conf(addr, tls, hosts, &opts))?;
            let mut cmd = Command::new(bin);
            cmd.arg("-db").arg("-f").arg(&conf);
            Proc::spawn("haproxy", cmd, Some(&dir.join("stderr.log")))?
        }
    };
    proc.wait_listening(addr, START_TIMEOUT).await?;
    if let Some(tls) = tls {
        proc.wait_listening(tls, START_TIMEOUT).await?;
    }
    Ok(Ok(Proxy {
        kind,
        addr,
        tls,
        proc: Some(proc),
    }))
}

/// The MIME types every proxy compresses in the gzip scenario.
const GZIP_TYPES: &str =
    "text/plain text/html application/json application/javascript application/xml image/svg+xml";

/// nginx: for one worker one process (no master); for more a master
/// (which forks the worker processes; their CPU and memory count through
/// the process tree). No access log, temp files in `dir`, keep-alive both
/// ways without a per-connection request cap. With `tls`, a second
/// `listen` with TLS (see [`nginx_tls`]).
fn nginx_conf(
    addr: SocketAddr,
    tls: Option<SocketAddr>,
    hosts: &[Host],
    dir: &Path,
    opts: &Opts,
) -> String {
    let d = dir.display();
    let workers = opts.workers();
    let master = if workers > 1 { "on" } else { "off" };
    let nofile = crate::procs::nofile_hard_limit()
        .unwrap_or(20_000)
        .min(200_000);
    let conns = crate::procs::max_proxy_conns();
    let mut servers = String::new();
    for h in hosts {
        let _ = writeln!(servers, "        server {};", h.backend);
    }
    let gzip = if let Some(level) = opts.gzip {
        format!(
            "    gzip on;\n    gzip_comp_level {level};\n    gzip_min_length 1024;\n    gzip_proxied any;\n    \
             gzip_vary on;\n    gzip_types {GZIP_TYPES};\n"
        )
    } else {
        "    gzip off;\n".to_string()
    };
    let tls = match (tls, &opts.tls) {
        (Some(addr), Some(cert)) => nginx_tls(addr, cert),
        _ => String::new(),
    };
    format!(
        "daemon off;\nmaster_process {master};\nworker_processes {workers};\nworker_rlimit_nofile {nofile};\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\n\
         events {{\n    worker_connections {conns};\n}}\n\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/client_body;\n    \
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
         scgi_temp_path {d}/scgi;\n    keepalive_timeout 60s;\n    keepalive_requests 100000000;\n{gzip}\n    \
         upstream backends {{\n{servers}        keepalive 64;\n        keepalive_requests 100000000;\n    }}\n\n    \
         server {{\n        listen {addr};\n{tls}        location / {{\n            proxy_pass http://backends;\n            \
         proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}\n    }}\n}}\n"
    )
}

/// nginx's TLS listener: HTTP/2 offered by ALPN as ours does, TLS 1.2 and
/// 1.3 as ours (nginx 1.22 would also take 1.0 and 1.1), OpenSSL's
/// defaults otherwise (session tickets on, no session cache).
fn nginx_tls(addr: SocketAddr, cert: &CertFiles) -> String {
    format!(
        "        listen {addr} ssl http2;\n        ssl_certificate {};\n        \
         ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n",
        cert.cert.display(),
        cert.key.display()
    )
}

/// HAProxy: [`Opts::workers`] threads, round robin, connections to backends reused
/// across clients (`http-reuse always`), no health checks (nginx has none
/// either), no logging. With `tls`, a second `bind` with `ssl crt` (cert
/// and key in one PEM) offering HTTP/2 by ALPN as ours does; HAProxy's
/// defaults already take TLS 1.2 and 1.3 only.
fn haproxy_conf(addr: SocketAddr, tls: Option<SocketAddr>, hosts: &[Host], opts: &Opts) -> String {
    let mut servers = String::new();
    for (i, h) in hosts.iter().enumerate() {
        let _ = writeln!(servers, "    server s{} {}", i + 1, h.backend);
    }
    let maxlevel = opts.gzip.unwrap_or(1);
    let maxconn = crate::procs::max_proxy_conns();
    let nbthread = opts.workers();
    let gzip = if opts.gzip.is_some() {
        format!("    compression algo gzip\n    compression type {GZIP_TYPES}\n")
    } else {
        String::new()
    };
    let tls = match (tls, &opts.tls) {
        (Some(addr), Some(cert)) => format!(
            "    bind {addr} ssl crt {} alpn h2,http/1.1\n",
            cert.combined.display()
        ),
        _ => String::new(),
    };
    format!(
        "global\n    nbthread {nbthread}\n    maxconn {maxconn}\n    tune.comp.maxlevel {maxlevel}\n\n\
         defaults\n    mode http\n    option http-keep-alive\n    timeout connect 1s\n    \
         timeout client 60s\n    timeout server 30s\n    timeout http-keep-alive 60s\n\n\
         frontend fe\n    bind {addr}\n{tls}{gzip}    default_backend be\n\n\
         backend be\n    balance roundrobin\n    http-reuse always\n{servers}"
    )
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use super::{haproxy_conf, nginx_conf, Opts};
    use crate::certs::CertFiles;
    use crate::cluster::Host;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn hosts() -> Vec<Host> {
        vec![Host {
            id: "b1".into(),
            backend: addr("127.0.0.1:9001"),
            agent: addr("127.0.0.1:9101"),
        }]
    }

    fn tls_opts() -> Opts {
        Opts {
            workers: 2,
            tls: Some(CertFiles {
                cert: "/run/c/cert.pem".into(),
                key: "/run/c/key.pem".into(),
                combined: "/run/c/combined.pem".into(),
                der: Vec::new().into(),
            }),
            ..Opts::default()
        }
    }

    #[test]
    fn nginx_listens_with_tls_beside_plain_in_the_same_server() {
        let tls = Some(addr("127.0.0.1:8443"));
        let conf = nginx_conf(
            addr("127.0.0.1:8080"),
            tls,
            &hosts(),
            Path::new("/d"),
            &tls_opts(),
        );
        let server = &conf[conf.find("    server {").unwrap()..];
        for line in [
            "        listen 127.0.0.1:8080;\n",
            "        listen 127.0.0.1:8443 ssl http2;\n",
            "        ssl_certificate /run/c/cert.pem;\n",
            "        ssl_certificate_key /run/c/key.pem;\n",
            "        ssl_protocols TLSv1.2 TLSv1.3;\n",
        ] {
            assert!(server.contains(line), "{line:?} in\n{conf}");
        }
        assert!(conf.contains("worker_processes 2;\n"));
        // Without TLS: no TLS listener, no certificate.
        let plain = nginx_conf(
            addr("127.0.0.1:8080"),
            None,
            &hosts(),
            Path::new("/d"),
            &Opts::default(),
        );
        assert!(!plain.contains("ssl"), "{plain}");
    }

    #[test]
    fn haproxy_binds_tls_with_cert_and_key_in_one_pem() {
        let tls = Some(addr("127.0.0.1:8443"));
        let conf = haproxy_conf(addr("127.0.0.1:8080"), tls, &hosts(), &tls_opts());
        let fe = &conf[conf.find("frontend fe\n").unwrap()..conf.find("backend be\n").unwrap()];
        assert!(fe.contains("    bind 127.0.0.1:8080\n"), "{fe}");
        assert!(
            fe.contains("    bind 127.0.0.1:8443 ssl crt /run/c/combined.pem alpn h2,http/1.1\n"),
            "{fe}"
        );
        assert!(conf.contains("    nbthread 2\n"));
        let plain = haproxy_conf(addr("127.0.0.1:8080"), None, &hosts(), &Opts::default());
        assert!(!plain.contains("ssl"), "{plain}");
    }
}
