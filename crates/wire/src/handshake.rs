//! The first exchange on every channel. The connecting side sends a [`Hello`]
//! frame naming the protocol version and its role; the accepting side answers
//! with a [`Welcome`] or a refusal and closes. Nothing else is read before it.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{FrameWriter, WireError, PROTOCOL_VERSION};

/// Handshake frames are tiny; a peer that sends more is not one of ours.
pub const HANDSHAKE_MAX_LEN: usize = 4096;

/// How long an accepting side waits for a peer to complete the handshake:
/// ours do it at once, and a peer that connects and stays silent must not
/// hold a task (or an accept loop) forever.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who is connecting.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The `host-core ctl` command line.
    Control,
    /// The `actor-runtime` worker process.
    Worker,
    /// The `provider-launcher` process.
    Launcher,
    /// A capability provider, through `shim`.
    Provider,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
    /// A per-launch secret for child processes, so that no other local process
    /// can pose as the host's own worker. Empty for the control CLI, which is
    /// authenticated by its peer uid instead.
    pub token: String,
    /// The identity the peer claims, where it has one: a provider's `V...`
    /// key. Checked against what the token was issued for.
    #[serde(default)]
    pub key: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Welcome {
    Accepted { version: u32 },
    Refused { reason: String },
}

/// Connecting side: send our hello, wait for the answer.
pub async fn connect<R, W>(
    reader: &mut R,
    writer: &mut W,
    role: Role,
    token: &str,
) -> Result<(), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    connect_as(reader, writer, role, token, "").await
}

/// Like [`connect`], also claiming an identity (a provider's key).
pub async fn connect_as<R, W>(
    reader: &mut R,
    writer: &mut W,
    role: Role,
    token: &str,
    key: &str,
) -> Result<(), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut w = FrameWriter::<_, Hello>::with_max_len(&mut *writer, HANDSHAKE_MAX_LEN);
    w.send(&Hello {
        version: PROTOCOL_VERSION,
        role,
        token: token.to_owned(),
        key: key.to_owned(),
    })
    .await?;
    match crate::frame::recv_exact::<_, Welcome>(reader, HANDSHAKE_MAX_LEN).await? {
        Some(Welcome::Accepted { .. }) => Ok(()),
        Some(Welcome::Refused { reason }) => Err(WireError::Handshake(reason)),
        None => Err(WireError::Handshake(
            "the peer closed the channel during the handshake".into(),
        )),
    }
}

/// Accepting side: read the peer's hello and check its version and role with
/// `check`. On refusal the reason is sent to the peer and returned.
pub async fn accept<R, W>(
    reader: &mut R,
    writer: &mut W,
    check: impl FnOnce(&Hello) -> Result<(), String>,
) -> Result<Hello, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = crate::frame::recv_exact::<_, Hello>(reader, HANDSHAKE_MAX_LEN)
        .await?
        .ok_or_else(|| {
            WireError::Handshake("the peer closed the channel before its hello".into())
        })?;
    let verdict = if hello.version != PROTOCOL_VERSION {
        Err(format!(
            "protocol version {} is not supported (this side speaks {PROTOCOL_VERSION})",
            hello.version
        ))
    } else {
        check(&hello)
    };
    let mut w = FrameWriter::<_, Welcome>::with_max_len(&mut *writer, HANDSHAKE_MAX_LEN);
    match verdict {
        Ok(()) => {
            w.send(&Welcome::Accepted {
                version: PROTOCOL_VERSION,
            })
            .await?;
            Ok(hello)
        }
        Err(reason) => {
            w.send(&Welcome::Refused {
                reason: reason.clone(),
            })
            .await?;
            Err(WireError::Handshake(reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[expect(
        clippy::disallowed_methods,
        reason = "in-memory pipes, not sockets: nothing to register"
    )]
    async fn accepted_and_refused() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let server = tokio::spawn(async move {
            accept(&mut br, &mut bw, |h| {
                if h.token == "secret" {
                    Ok(())
                } else {
                    Err("bad token".into())
                }
            })
            .await
        });
        connect(&mut ar, &mut aw, Role::Worker, "secret")
            .await
            .unwrap();
        assert_eq!(server.await.unwrap().unwrap().role, Role::Worker);

        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let server =
            tokio::spawn(async move { accept(&mut br, &mut bw, |_| Err("no".into())).await });
        let err = connect(&mut ar, &mut aw, Role::Worker, "x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no"));
        assert!(server.await.unwrap().is_err());
    }
}
