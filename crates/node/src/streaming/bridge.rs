//! WebSocket channel protocol (kubectl) ↔ SPDY remote command v4 (containerd).
//!
//! The SPDY side is a client connection: one stream per channel, opened in client-go's
//! order (error, stdin, stdout, stderr, resize) with header `streamType`. stdin's end
//! (v5's close message) is a FIN on the stdin stream, which is how the command sees EOF.
//! containerd writes the final status on the error stream, then resets the streams and
//! goes away: the status is then passed on and the WebSocket closed.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::channel::{self, Incoming};
use super::spdy::{self, Frame};
use super::Options;

/// Largest payload of one message or frame we send.
const CHUNK: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    #[error(transparent)]
    Spdy(#[from] spdy::SpdyError),
    #[error("runtime connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("client connection: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// The SPDY streams of one command, by the channel they carry.
struct Streams {
    ids: Vec<(u8, u32)>,
}

impl Streams {
    fn id(&self, channel: u8) -> Option<u32> {
        self.ids
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, id)| *id)
    }

    fn channel(&self, id: u32) -> Option<u8> {
        self.ids.iter().find(|(_, i)| *i == id).map(|(c, _)| *c)
    }
}

/// The SYN_STREAM frames of a command with `options`, ids from 1 up.
fn open_streams(options: &Options) -> (Streams, Vec<Frame>) {
    let mut wanted = vec![(channel::ERROR, "error")];
    if options.stdin {
        wanted.push((channel::STDIN, "stdin"));
    }
    if options.stdout {
        wanted.push((channel::STDOUT, "stdout"));
    }
    if options.stderr && !options.tty {
        wanted.push((channel::STDERR, "stderr"));
    }
    if options.tty {
        wanted.push((channel::RESIZE, "resize"));
    }
    let mut ids = Vec::new();
    let mut frames = Vec::new();
    for (i, (channel, kind)) in wanted.into_iter().enumerate() {
        let stream_id = 1 + 2 * i as u32;
        ids.push((channel, stream_id));
        frames.push(Frame::SynStream {
            stream_id,
            associated: 0,
            priority: 0,
            fin: false,
            headers: vec![("streamType".into(), kind.into())],
        });
    }
    (Streams { ids }, frames)
}

pub(crate) async fn run<S, R>(
    ws: WebSocketStream<S>,
    runtime: R,
    options: &Options,
    v5: bool,
) -> Result<(), BridgeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rt_rx, mut rt_tx) = tokio::io::split(runtime);
    // Writes to containerd go through their own task, so that this loop keeps reading
    // its output while stdin is being written (no flow control would save a deadlock).
    let (to_runtime, mut queued) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = queued.recv().await {
            if rt_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = rt_tx.shutdown().await;
    });
    let send = |bytes: Vec<u8>| {
        to_runtime
            .send(bytes)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    };
    let mut encoder = spdy::Encoder::default();
    let mut decoder = spdy::Decoder::default();
    let (streams, syn) = open_streams(options);
    let mut out = Vec::new();
    for frame in &syn {
        encoder.encode(frame, &mut out)?;
    }
    send(std::mem::take(&mut out))?;
    let mut status: Vec<u8> = Vec::new();
    let mut status_sent = false;
    let mut stdin_open = options.stdin;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let result: Result<(), BridgeError> = 'session: loop {
        tokio::select! {
            message = ws_rx.next() => {
                let data = match message {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Close(_))) | None => break 'session Ok(()),
                    Some(Err(e)) => break 'session Err(e.into()),
                    Some(Ok(_)) => continue,
                };
                let frame = match channel::parse(&data, v5) {
                    Incoming::Stdin(bytes) if stdin_open && !bytes.is_empty() => {
                        streams.id(channel::STDIN).map(|stream_id| Frame::Data {
                            stream_id,
                            fin: false,
                            data: Bytes::copy_from_slice(bytes),
                        })
                    }
                    Incoming::Resize(bytes) => streams.id(channel::RESIZE).map(|stream_id| Frame::Data {
                        stream_id,
                        fin: false,
                        data: Bytes::copy_from_slice(bytes),
                    }),
                    Incoming::CloseStdin if stdin_open => {
                        stdin_open = false;
                        streams.id(channel::STDIN).map(|stream_id| Frame::Data {
                            stream_id,
                            fin: true,
                            data: Bytes::new(),
                        })
                    }
                    _ => None,
                };
                if let Some(frame) = frame {
                    out.clear();
                    encoder.encode(&frame, &mut out)?;
                    if let Err(e) = send(std::mem::take(&mut out)) {
                        break 'session Err(e.into());
                    }
                }
            }
            read = rt_rx.read_buf(&mut buf) => {
                match read {
                    Ok(0) => break 'session Ok(()),
                    Ok(_) => {}
                    Err(e) => break 'session Err(e.into()),
                }
                while let Some(frame) = decoder.decode(&mut buf)? {
                    match frame {
                        Frame::Data { stream_id, fin, data } => match streams.channel(stream_id) {
                            Some(channel::ERROR) => {
                                status.extend_from_slice(&data);
                                if fin && !status_sent {
                                    status_sent = true;
                                    ws_tx.send(Message::Binary(channel::message(channel::ERROR, &status).into())).await?;
                                }
                            }
                            Some(ch @ (channel::STDOUT | channel::STDERR)) => {
                                for chunk in data.chunks(CHUNK) {
                                    ws_tx.send(Message::Binary(channel::message(ch, chunk).into())).await?;
                                }
                            }
                            _ => {}
                        },
                        Frame::Ping(id) => {
                            out.clear();
                            encoder.encode(&Frame::Ping(id), &mut out)?;
                            send(std::mem::take(&mut out))?;
                        }
                        Frame::GoAway { .. } => break 'session Ok(()),
                        Frame::RstStream { stream_id, .. } if streams.channel(stream_id) == Some(channel::ERROR) => {
                            break 'session Ok(());
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    if !status_sent && !status.is_empty() {
        let _ = ws_tx
            .send(Message::Binary(
                channel::message(channel::ERROR, &status).into(),
            ))
            .await;
    }
    let _ = ws_tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(to_runtime);
    let _ = writer.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_streams_in_client_gos_order() {
        let options = Options {
            command: vec!["sh".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
            ports: vec![],
        };
        let (streams, frames) = open_streams(&options);
        assert_eq!(
            streams.ids,
            [
                (channel::ERROR, 1),
                (channel::STDIN, 3),
                (channel::STDOUT, 5),
                (channel::STDERR, 7)
            ]
        );
        assert_eq!(frames.len(), 4);
        let Frame::SynStream { headers, .. } = &frames[1] else {
            panic!("not a SYN_STREAM")
        };
        assert_eq!(spdy::header(headers, "streamtype"), Some("stdin"));
        let tty = Options {
            tty: true,
            stderr: false,
            ..options
        };
        let (streams, _) = open_streams(&tty);
        assert_eq!(streams.id(channel::RESIZE), Some(7));
        assert_eq!(streams.id(channel::STDERR), None);
    }
}
