//! A lean Redis client for `imstore bench --against redis://…`: RESP2
//! requests written straight to a TCP stream and replies parsed from a
//! buffer, so the client is not what limits Redis (the `redis` crate's
//! own client spent 1.3 cores parsing replies in the run). One
//! connection per bench client, one request in flight on it, or a
//! pipeline of many (the preload).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A connection to one Redis server.
pub struct Resp {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Resp {
    /// Connects to `url` (`redis://HOST:PORT`).
    pub async fn connect(url: &str) -> Result<Resp, String> {
        let address = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url:?} is not a redis://HOST:PORT address"))?
            .trim_end_matches('/');
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Resp {
            stream,
            buffer: Vec::with_capacity(64 << 10),
        })
    }

    /// Sends one command and waits for its reply (a Redis error reply is
    /// an `Err`).
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let mut replies = self.pipeline(&[args.to_vec()]).await?;
        match replies.pop() {
            Some(Reply::Error(e)) => Err(format!("redis: {e}")),
            Some(reply) => Ok(reply),
            None => Err("redis answered nothing".into()),
        }
    }

    /// Sends `commands` in one write and reads their replies, in order.
    pub async fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>, String> {
        let mut out = Vec::new();
        for args in commands {
            encode(args, &mut out);
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            match parse(&self.buffer)? {
                Some((reply, used)) => {
                    self.buffer.drain(..used);
                    replies.push(reply);
                }
                None => {
                    let mut chunk = [0u8; 16 << 10];
                    let n = self
                        .stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("redis: {e}"))?;
                    if n == 0 {
                        return Err("redis closed the connection".into());
                    }
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
            }
        }
        Ok(replies)
    }
}

/// One command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The first complete reply in `buffer` and the bytes it takes; `None`
/// when more bytes are needed; `Err` on bytes that are not RESP.
pub fn parse(buffer: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let (kind, line) = match buffer.split_first() {
        Some((kind, _)) => (*kind, &buffer[1..end]),
        None => return Ok(None),
    };
    let text = std::str::from_utf8(line).map_err(|_| "redis sent a line that is not UTF-8")?;
    let number = || {
        text.parse::<i64>()
            .map_err(|_| format!("redis sent {text:?} where a number belongs"))
    };
    let header = end + 2;
    match kind {
        b'+' => Ok(Some((Reply::Simple(text.to_owned()), header))),
        b'-' => Ok(Some((Reply::Error(text.to_owned()), header))),
        b':' => Ok(Some((Reply::Integer(number()?), header))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), header)));
            }
            let len = len as usize;
            if buffer.len() < header + len + 2 {
                return Ok(None);
            }
            let bytes = buffer[header..header + len].to_vec();
            Ok(Some((Reply::Bulk(Some(bytes)), header + len + 2)))
        }
        b'*' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), header)));
            }
            let mut at = header;
            let mut items = Vec::with_capacity((count as usize).min(1024));
            for _ in 0..count {
                match parse(&buffer[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(format!(
            "redis sent a reply of unknown type {:?}",
            other as char
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let stream_entries = b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nm\r\n$2\r\nhi\r\n*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\nm\r\n$0\r\n\r\n:7\r\n";
        let (reply, used) = parse(stream_entries).unwrap().unwrap();
        let Reply::Array(Some(entries)) = &reply else {
            panic!("{reply:?}")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(&stream_entries[used..], b":7\r\n");
        // Every cut short of the end asks for more bytes.
        for cut in 0..used {
            assert_eq!(parse(&stream_entries[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Reply::Simple("OK".into()), 5))
        );
        assert_eq!(
            parse(b"-ERR no\r\n").unwrap(),
            Some((Reply::Error("ERR no".into()), 9))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&[b"XADD", b"k", b"*", b"m", b""], &mut out);
        assert_eq!(
            out,
            b"*5\r\n$4\r\nXADD\r\n$1\r\nk\r\n$1\r\n*\r\n$1\r\nm\r\n$0\r\n\r\n"
        );
        let (reply, used) = parse(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            reply,
            Reply::Array(Some(
                [&b"XADD"[..], b"k", b"*", b"m", b""]
                    .iter()
                    .map(|a| Reply::Bulk(Some(a.to_vec())))
                    .collect()
            ))
        );
    }
}
