//! The admin client: one request a connection, over the socket of a running dev cluster.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::Method;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::socket::{euid, find};
use super::wire::{self, Applied, CreateRequest, ErrorBody, SignHostAnswer, SignHostRequest};
use crate::locks::{Lock, LockTarget};
use crate::resources::Kind;

/// A client of a running dev cluster's admin socket.
#[derive(Clone, Debug)]
pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    /// A client of the socket at `path`, or, without one, of the one dev cluster this user
    /// runs with its socket in [`default_dir`](super::default_dir).
    pub fn new(path: Option<&Path>) -> anyhow::Result<Self> {
        let path = match path {
            Some(path) => path.to_owned(),
            None => find()?,
        };
        Ok(Self { path })
    }

    /// The socket it talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.call(Method::GET, "/v1/status".to_owned(), None).await
    }

    /// `GET /v1/heartbeats`: every bot instance heartbeat received, oldest first (`tctl bots
    /// instances`).
    pub async fn heartbeats(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let answer = self
            .call(Method::GET, "/v1/heartbeats".to_owned(), None)
            .await?;
        serde_json::from_value(answer).context("the dev cluster's heartbeats are malformed")
    }

    /// `tctl create [-f]`: every resource of `yaml` (`origin` names it in errors), or none.
    pub async fn create(
        &self,
        origin: &str,
        yaml: &str,
        force: bool,
    ) -> anyhow::Result<Vec<Applied>> {
        let request = CreateRequest {
            origin: origin.to_owned(),
            yaml: yaml.to_owned(),
            force,
        };
        let body = serde_json::to_vec(&request)?;
        let answer = self
            .call(Method::POST, "/v1/resources".to_owned(), Some(body))
            .await?;
        serde_json::from_value(answer).context("the dev cluster's answer to create is malformed")
    }

    /// `tctl lock`: a new lock (named by a new UUID, as tctl names them) on `target`, in force
    /// until `expires` (for ever without). Returns its name.
    pub async fn lock(
        &self,
        target: LockTarget,
        message: String,
        expires: Option<SystemTime>,
    ) -> anyhow::Result<String> {
        let lock = Lock {
            name: uuid::Uuid::new_v4().to_string(),
            target,
            message,
            expires,
        };
        let yaml = serde_yaml::to_string(&lock.to_resource())?;
        self.create("the lock", &yaml, false).await?;
        Ok(lock.name)
    }

    /// An SSH host certificate for `public_key` (`authorized_keys` form) valid for
    /// `principals`, from the host CA: one OpenSSH line, for sshd's `HostCertificate`.
    pub async fn sign_host(
        &self,
        public_key: &str,
        principals: &[String],
    ) -> anyhow::Result<String> {
        let request = SignHostRequest {
            public_key: public_key.to_owned(),
            principals: principals.to_vec(),
        };
        let answer = self
            .call(
                Method::POST,
                "/v1/sign-host".to_owned(),
                Some(serde_json::to_vec(&request)?),
            )
            .await?;
        let answer: SignHostAnswer = serde_json::from_value(answer)
            .context("the dev cluster's answer to sign-host is malformed")?;
        Ok(answer.certificate)
    }

    /// `tctl get KIND/NAME`.
    pub async fn get(&self, kind: Kind, name: &str) -> anyhow::Result<serde_json::Value> {
        let path = format!("/v1/{}/{}", kind.plural(), wire::encode(name));
        self.call(Method::GET, path, None).await
    }

    /// `tctl get KIND`: every resource of the kind, by name.
    pub async fn list(&self, kind: Kind) -> anyhow::Result<Vec<serde_json::Value>> {
        let answer = self
            .call(Method::GET, format!("/v1/{}", kind.plural()), None)
            .await?;
        serde_json::from_value(answer).context("the dev cluster's list is malformed")
    }

    /// `tctl rm KIND/NAME`.
    pub async fn remove(&self, kind: Kind, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/{}/{}", kind.plural(), wire::encode(name));
        self.call(Method::DELETE, path, None).await.map(drop)
    }

    /// `tctl bound-keypair request-rotation NAME`: the token's `rotate_after` becomes now, so
    /// its bot's next join rotates its key. Returns the time set, as Teleport writes times.
    pub async fn request_rotation(&self, token: &str) -> anyhow::Result<String> {
        let path = format!("/v1/tokens/{}/request-rotation", wire::encode(token));
        let answer = self.call(Method::POST, path, None).await?;
        answer["rotate_after"]
            .as_str()
            .map(str::to_owned)
            .context("the dev cluster's answer to request-rotation is malformed")
    }

    /// One request; a refusal becomes the cluster's one-line error.
    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<serde_json::Value> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("the admin socket does not speak HTTP")?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "keybound-dev-cluster");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await.with_context(|| {
            format!("the dev cluster at {} did not answer", self.path.display())
        })?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let error = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("the dev cluster answered {status}"));
            return Err(anyhow!(error));
        }
        serde_json::from_slice(&body).context("the dev cluster's answer is not JSON")
    }

    /// Connects, and checks that the socket is served by this user (not a socket someone else
    /// put in its place).
    async fn connect(&self) -> anyhow::Result<UnixStream> {
        let path = self.path.display();
        let stream = match UnixStream::connect(&self.path).await {
            Ok(stream) => stream,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::ConnectionRefused =>
            {
                bail!(
                    "no dev cluster answers at {path}; start one with `keybound dev-cluster`, or pass the --admin-socket it printed"
                )
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
                "cannot open the admin socket {path}: permission denied; only the user running the dev cluster may use it"
            ),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot connect to the admin socket {path}"));
            }
        };
        let server = stream.peer_cred().map(|c| c.uid()).ok();
        if server != Some(euid()) {
            bail!(
                "the admin socket {path} is served by uid {}, not by you (uid {}); refusing to use it",
                server.map_or_else(|| "unknown".to_owned(), |u| u.to_string()),
                euid()
            );
        }
        Ok(stream)
    }
}
