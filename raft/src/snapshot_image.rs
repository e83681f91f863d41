//! The bytes of a raft snapshot ([`SnapshotImage`]): a file, or an image
//! still to be exported.
//!
//! A replica's engine is itself durable, so a snapshot is needed for only
//! two things: to let openraft purge the log (which only needs the engine
//! fsynced up to the snapshot's last log id) and to bring a follower that
//! is behind the purged log level (which needs the image). Exporting the
//! whole shard every `snapshot_every` entries paid an O(shard size) scan
//! for the first need, on every replica at once: on two shared cores that
//! stalled writes for hundreds of milliseconds. So an image is exported
//! only when something reads it: the export thread takes its RocksDB
//! snapshot at once (so the image's metadata is known, and matches its
//! data, before anyone reads), then waits; the first read or seek tells it
//! to go, and dropping the image unread lets it end without exporting.

use std::future::Future;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// A snapshot's image (openraft's `SnapshotData`): readable, writable and
/// seekable like the file it is or will be.
pub struct SnapshotImage {
    state: State,
    /// A seek asked for before the file existed, made once it does.
    pending_seek: Option<SeekFrom>,
    /// The file's path, for an image being received.
    received: Option<std::path::PathBuf>,
}

enum State {
    /// To be exported: `go` starts the export, `file` brings the result.
    Deferred {
        go: Option<oneshot::Sender<()>>,
        file: oneshot::Receiver<io::Result<std::fs::File>>,
    },
    Ready(tokio::fs::File),
    Failed(io::ErrorKind, String),
}

impl SnapshotImage {
    /// An image being received into the file at `path`.
    pub(crate) fn receiving(file: tokio::fs::File, path: std::path::PathBuf) -> Self {
        SnapshotImage {
            state: State::Ready(file),
            pending_seek: None,
            received: Some(path),
        }
    }

    /// Where the image is being received, if it is (and not exported).
    pub(crate) fn received_path(&self) -> Option<&std::path::Path> {
        self.received.as_deref()
    }

    /// An image exported on first use: the exporter waits for `go` (or
    /// ends when it is dropped) and sends the finished file, positioned
    /// at its start, on `file`.
    pub(crate) fn deferred(
        go: oneshot::Sender<()>,
        file: oneshot::Receiver<io::Result<std::fs::File>>,
    ) -> Self {
        SnapshotImage {
            state: State::Deferred { go: Some(go), file },
            pending_seek: None,
            received: None,
        }
    }

    /// Starts the export if it has not started and completes once the
    /// file is there (or the export failed, which every later call
    /// reports too).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let State::Deferred { go, file } = &mut self.state {
            if let Some(go) = go.take() {
                // A dropped exporter shows up on `file` below.
                let _ = go.send(());
            }
            self.state = match ready!(Pin::new(file).poll(cx)) {
                Ok(Ok(file)) => State::Ready(tokio::fs::File::from_std(file)),
                Ok(Err(e)) => State::Failed(e.kind(), format!("exporting a snapshot: {e}")),
                Err(_) => State::Failed(
                    io::ErrorKind::Other,
                    "the snapshot export thread ended without an image".into(),
                ),
            };
        }
        match &self.state {
            State::Ready(_) => Poll::Ready(Ok(())),
            State::Failed(kind, message) => {
                Poll::Ready(Err(io::Error::new(*kind, message.clone())))
            }
            State::Deferred { .. } => Poll::Pending,
        }
    }

    /// The file, once [`SnapshotImage::poll_ready`] said it is there.
    fn file(&mut self) -> io::Result<Pin<&mut tokio::fs::File>> {
        match &mut self.state {
            State::Ready(file) => Ok(Pin::new(file)),
            _ => Err(io::Error::other("the snapshot image is not ready")),
        }
    }
}

impl AsyncRead for SnapshotImage {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        this.file()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotImage {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        this.file()?.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        this.file()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        this.file()?.poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotImage {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::Ready(file) => Pin::new(file).start_seek(position),
            _ => {
                this.pending_seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        if let Some(position) = this.pending_seek.take() {
            this.file()?.start_seek(position)?;
        }
        this.file()?.poll_complete(cx)
    }
}
