use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Certificates for a TLS etcd: a CA, a server cert for 127.0.0.1, and a client cert.
pub struct TlsFiles {
    pub dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Generates the chain with the openssl CLI (Debian's `openssl`).
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let script = format!(
            r#"set -e
cd {d}
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=twill-test-ca -keyout ca.key -out ca.crt 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > server.ext
openssl req -newkey rsa:2048 -nodes -subj /CN=etcd -keyout server.key -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.crt 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl req -newkey rsa:2048 -nodes -subj /CN=twilld -keyout client.key -out client.csr 2>/dev/null
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.crt 2>/dev/null
"#
        );
        let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
        assert!(st.success(), "openssl failed to generate test certificates");
        TlsFiles { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A real etcd server with its own data dir and ports, killed on drop.
pub struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    netns: Option<String>,
    host: String,
    client_port: u16,
    peer_port: u16,
    tls: bool,
    tls_dir: Option<PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// etcd on 127.0.0.1 with random free ports.
    pub fn start() -> Self {
        Self::launch(None, "127.0.0.1", free_port(), free_port(), None)
    }

    /// etcd requiring client certificates signed by `tls`'s CA.
    pub fn start_tls(tls: &TlsFiles) -> Self {
        Self::launch(
            None,
            "127.0.0.1",
            free_port(),
            free_port(),
            Some(tls.dir.path().to_path_buf()),
        )
    }

    /// etcd inside network namespace `ns`, listening on `ip` (an underlay address there).
    pub fn start_in_netns(ns: &str, ip: &str) -> Self {
        Self::launch(Some(ns.to_string()), ip, 2379, 2380, None)
    }

    fn launch(
        netns: Option<String>,
        host: &str,
        client_port: u16,
        peer_port: u16,
        tls_dir: Option<PathBuf>,
    ) -> Self {
        let mut e = Etcd {
            child: None,
            data: tempfile::tempdir().unwrap(),
            netns,
            host: host.to_string(),
            client_port,
            peer_port,
            tls: tls_dir.is_some(),
            tls_dir,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        assert!(
            Path::new("/usr/bin/etcd").exists(),
            "etcd is not installed: apt-get install etcd-server (scripts/test.sh does this)"
        );
        let scheme = if self.tls { "https" } else { "http" };
        let client = format!("{scheme}://{}:{}", self.host, self.client_port);
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/bin/etcd"]);
                c
            }
            None => Command::new("/usr/bin/etcd"),
        };
        // The member name carries the run's prefix, so test.sh's leftover check finds this
        // run's etcd and not another run's (or a fresh-machine run's, which shares the PIDs).
        let name = format!("test-{}", crate::netns::run_prefix());
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", self.data.path().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={name}={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(d) = &self.tls_dir {
            cmd.arg(format!("--cert-file={}", d.join("server.crt").display()))
                .arg(format!("--key-file={}", d.join("server.key").display()))
                .arg(format!("--trusted-ca-file={}", d.join("ca.crt").display()))
                .arg("--client-cert-auth");
        }
        // SAFETY: prctl in the child before exec; async-signal-safe. It makes the kernel
        // kill etcd if the test process dies without running our Drop.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn etcd"));
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cmd = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "etcdctl"]);
                    c
                }
                None => Command::new("etcdctl"),
            };
            cmd.arg(format!("--endpoints={}", self.endpoint())).args([
                "--command-timeout=2s",
                "endpoint",
                "health",
            ]);
            if let Some(d) = &self.tls_dir {
                cmd.arg(format!("--cacert={}", d.join("ca.crt").display()))
                    .arg(format!("--cert={}", d.join("client.crt").display()))
                    .arg(format!("--key={}", d.join("client.key").display()));
            }
            let ok = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited while starting: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `etcdctl` against this server, for assertions and setup; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcdctl"]);
                c
            }
            None => Command::new("etcdctl"),
        };
        let out = cmd
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
