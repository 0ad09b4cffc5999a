//! The latency floor of this machine: the least a STOMP broker could add.
//!
//! A deliberately minimal "broker" for `stampede-bench latency` and `fanout`: one blocking
//! thread per connection, no queues, no limits, no acks, no storage; a SEND is decoded with
//! Stampede's codec and written as a MESSAGE to every subscriber of that destination from the
//! publisher's own thread, right away. No broker can deliver with less work than this, so its
//! latency is the floor set by the kernel, the loopback path and the generator on this machine;
//! `BENCHMARKS.md` compares real brokers against it. It is a measuring instrument, not a
//! broker: never point a client that matters at it.
//!
//! ```sh
//! cargo run --release -p stampede-bench --bin forwarding-floor -- 127.0.0.1:61699
//! target/release/stampede-bench --url tcp://127.0.0.1:61699 latency --rate 1000
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use stampede_protocol::{Command, Decoder, Frame, Item, Limits, Version, encode};

/// Subscribers by destination: (socket, subscription id).
type Subscribers = Arc<Mutex<HashMap<String, Vec<(TcpStream, String)>>>>;

fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:61699".to_owned());
    let listener = TcpListener::bind(&address)?;
    eprintln!("forwarding floor listening on {address}");
    let subscribers: Subscribers = Arc::default();
    for stream in listener.incoming() {
        let stream = stream?;
        let subscribers = Arc::clone(&subscribers);
        std::thread::spawn(move || {
            if let Err(error) = serve(stream, &subscribers) {
                eprintln!("connection ended: {error}");
            }
        });
    }
    Ok(())
}

fn serve(mut stream: TcpStream, subscribers: &Subscribers) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut decoder = Decoder::new(Limits::default());
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut output = BytesMut::new();
    let mut next_id: u64 = 0;
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&chunk[..n]);
        while let Some(item) = decoder.decode(&mut input).map_err(std::io::Error::other)? {
            let Item::Frame(frame) = item else { continue };
            let reply = match frame.command {
                Command::Connect | Command::Stomp => {
                    decoder.set_version(Version::V1_2);
                    Some(Frame::new(Command::Connected).with_header("version", "1.2").with_header("heart-beat", "0,0"))
                }
                Command::Subscribe => {
                    let destination = frame.header("destination").unwrap_or_default().to_owned();
                    let id = frame.header("id").unwrap_or_default().to_owned();
                    let mut table = subscribers.lock().unwrap_or_else(|p| p.into_inner());
                    table.entry(destination).or_default().push((stream.try_clone()?, id));
                    receipt(&frame)
                }
                Command::Send => {
                    let destination = frame.header("destination").unwrap_or_default();
                    let mut table = subscribers.lock().unwrap_or_else(|p| p.into_inner());
                    for (subscriber, id) in table.get_mut(destination).into_iter().flatten() {
                        next_id += 1;
                        let message = Frame::new(Command::Message)
                            .with_header("destination", destination)
                            .with_header("message-id", next_id.to_string())
                            .with_header("subscription", id.as_str())
                            .with_body(frame.body.clone());
                        output.clear();
                        encode(&message, Version::V1_2, &mut output);
                        subscriber.write_all(&output)?;
                    }
                    drop(table);
                    receipt(&frame)
                }
                Command::Disconnect => {
                    if let Some(reply) = receipt(&frame) {
                        output.clear();
                        encode(&reply, Version::V1_2, &mut output);
                        stream.write_all(&output)?;
                    }
                    return Ok(());
                }
                _ => receipt(&frame),
            };
            if let Some(reply) = reply {
                output.clear();
                encode(&reply, Version::V1_2, &mut output);
                stream.write_all(&output)?;
            }
        }
    }
}

fn receipt(frame: &Frame) -> Option<Frame> {
    frame.header("receipt").map(|id| Frame::new(Command::Receipt).with_header("receipt-id", id))
}
