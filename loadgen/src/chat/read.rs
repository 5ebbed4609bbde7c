//! A phone's reading half: frames from the server (or packets from a
//! broker), and what each means for the phone's sends and the counts.

use std::{rc::Rc, sync::atomic::Ordering::Relaxed, time::Duration};

use futures_lite::{io::ReadHalf, AsyncReadExt};
use wire::{ErrorKind, Phone, ServerFrame};

use super::phone::{key, PhoneState, RETRY_MS, RETRY_MS_MAX};
use super::thread::Thread;
use crate::connection::BoxIo;
use crate::dial::Protocol;
use crate::mqtt;

pub(super) async fn read_loop(
    thread: &Thread,
    phone: &Rc<PhoneState>,
    mut reader: ReadHalf<BoxIo>,
    mut inbox: Vec<u8>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    if phone.stalled {
        futures_lite::future::poll_fn(|cx| {
            if thread.shared.stop_sending.load(Relaxed) {
                std::task::Poll::Ready(())
            } else {
                thread.stalled_readers.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
    loop {
        let taken = match thread.dialer.protocol {
            Protocol::Isle => take_isle(thread, phone, &mut inbox),
            Protocol::Mqtt => take_mqtt(thread, phone, &mut inbox),
        };
        if let Err(error) = taken {
            eprintln!("bad frame from the server: {error:#}");
            thread.shared.errors.fetch_add(1, Relaxed);
            return;
        }
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                if !thread.shared.finished.load(Relaxed) {
                    thread.shared.disconnects.fetch_add(1, Relaxed);
                }
                return;
            }
            Ok(n) => n,
        };
        inbox.extend_from_slice(&buffer[..n]);
    }
}

/// Handles and removes the whole isle frames at the front of `inbox`, then
/// has the writer acknowledge the messages among them.
pub(super) fn take_isle(
    thread: &Thread,
    phone: &Rc<PhoneState>,
    inbox: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut max_seq = 0;
    let taken = crate::dial::take_frames(inbox, |frame| {
        max_seq = max_seq.max(handle(thread, phone, frame));
    });
    if max_seq > 0 {
        phone.ack_up_to.set(phone.ack_up_to.get().max(max_seq));
        phone.wake();
    }
    taken
}

/// Handles one frame; returns the mailbox seq to acknowledge (0 for none).
pub(super) fn handle(thread: &Thread, phone: &Rc<PhoneState>, frame: ServerFrame<'_>) -> u64 {
    let shared = &thread.shared;
    match frame {
        ServerFrame::Sent { client_id, .. } => {
            on_sent(thread, phone, client_id);
            0
        }
        ServerFrame::Message {
            seq,
            from,
            client_id,
            body,
            ..
        } => {
            on_message(thread, phone, from, client_id, &body);
            seq
        }
        ServerFrame::Receipt { seq, .. } => {
            shared.receipts.fetch_add(1, Relaxed);
            seq
        }
        ServerFrame::Error {
            kind,
            client_id,
            detail,
        } => {
            if shared.errors.fetch_add(1, Relaxed) < 5 {
                eprintln!(
                    "phone {}: error {kind:?} for {client_id:?}: {detail}",
                    phone.index
                );
            }
            if let Some(client_id) = client_id {
                on_refused(thread, phone, client_id, kind);
            }
            0
        }
        _ => 0,
    }
}

/// The server refused the send `client_id`: a final refusal ends it, a
/// retryable one keeps it in flight to be written again (see the module
/// doc).
pub(super) fn on_refused(thread: &Thread, phone: &Rc<PhoneState>, client_id: u64, kind: ErrorKind) {
    let shared = &thread.shared;
    if !phone.in_flight.borrow().contains_key(&client_id) {
        return;
    }
    if !kind.is_retryable() {
        phone.in_flight.borrow_mut().remove(&client_id);
        shared.rejected.fetch_add(1, Relaxed);
        answered(thread, phone);
        send_next(thread, phone);
        return;
    }
    shared.refused_retryable.fetch_add(1, Relaxed);
    match kind {
        ErrorKind::OutOfOrder => shared.out_of_order.fetch_add(1, Relaxed),
        ErrorKind::Unavailable => shared.unavailable.fetch_add(1, Relaxed),
        _ => 0,
    };
    let first = {
        let mut refused = phone.refused.borrow_mut();
        refused.insert(client_id);
        refused.len() == 1
    };
    if first {
        // Jittered, so that phones refused together do not come back
        // together.
        let wait = phone.retry_wait_ms.get();
        phone.retry_wait_ms.set((wait * 2).min(RETRY_MS_MAX));
        let wait = wait / 2 + thread.random(wait / 2 + 1);
        let phone = phone.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(wait)).await;
            phone.retry_due.set(true);
            phone.wake();
        })
        .detach();
    }
}

/// The server has taken responsibility for a send.
pub(super) fn on_sent(thread: &Thread, phone: &PhoneState, client_id: u64) {
    let shared = &thread.shared;
    let sent = phone.in_flight.borrow_mut().remove(&client_id);
    if let Some(sent) = sent {
        phone.retry_wait_ms.set(RETRY_MS);
        thread.record_sent(phone.index as usize, sent.intended_ns);
        answered(thread, phone);
        shared.acked.fetch_add(1, Relaxed);
        thread.acked.borrow_mut().push(key(phone.index, client_id));
        send_next(thread, phone);
    }
}

/// A send was answered for good: in closed loop another takes its place,
/// so the phone keeps `--window` outstanding whatever the answers were.
fn send_next(thread: &Thread, phone: &PhoneState) {
    if thread.args.rate == 0 && !thread.shared.stop_sending.load(Relaxed) {
        phone.queue.borrow_mut().push_back(0);
    }
    if !phone.queue.borrow().is_empty() {
        phone.wake();
    }
}

/// One of `phone`'s sends had its answer (`Sent` or a final refusal): the
/// wait since the answer before, or since the phone began waiting with
/// nothing outstanding, may be the longest gap yet.
fn answered(thread: &Thread, phone: &PhoneState) {
    let now = thread.now_ns();
    thread.note_answer_gap(now.saturating_sub(phone.answer_mark_ns.replace(now)));
}

/// Reordered deliveries named on stderr, at most.
const REORDERED_NAMED_MAX: u64 = 20;

/// A message reached `phone`: counted once, timed, checked for order.
pub(super) fn on_message(
    thread: &Thread,
    phone: &PhoneState,
    from: Phone,
    client_id: u64,
    body: &[u8],
) {
    let shared = &thread.shared;
    // A sender outside this run's range cannot be one of ours; it still
    // counts as a delivery, under an index no phone uses.
    let from_index = from
        .as_u64()
        .wrapping_sub(thread.first)
        .min(u64::from(u32::MAX)) as u32;
    if !thread
        .delivered
        .borrow_mut()
        .insert(key(from_index, client_id))
    {
        shared.duplicates.fetch_add(1, Relaxed);
        return;
    }
    shared.delivered.fetch_add(1, Relaxed);
    if phone.stalled {
        // Left out of latency and throughput alike: what is measured is
        // everyone else.
        shared.delivered_to_stalled.fetch_add(1, Relaxed);
    } else {
        let intended = body
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let now = thread.now_ns();
        if intended >= thread.warmup_end_ns.get() {
            let latency = now.saturating_sub(intended).max(1);
            thread.record_latency(from_index as usize, phone.index as usize, intended, latency);
        }
        if (thread.warmup_end_ns.get()..thread.sending_end_ns.get()).contains(&now) {
            thread.measured.set(thread.measured.get() + 1);
        }
    }
    let mut last = thread.last_from.borrow_mut();
    let previous = last.entry((from_index, phone.index)).or_insert(0);
    if client_id < *previous {
        let count = shared.reordered.fetch_add(1, Relaxed);
        // The first few are named, to look for on the servers (`isle ctl
        // trace SENDER CLIENT_ID`).
        if count < REORDERED_NAMED_MAX {
            eprintln!(
                "reordered: {from}'s client_id {client_id} reached {} after its client_id {}",
                phone.number, *previous
            );
        }
    }
    *previous = (*previous).max(client_id);
}

/// Handles and removes the whole MQTT packets at the front of `inbox`.
pub(super) fn take_mqtt(
    thread: &Thread,
    phone: &PhoneState,
    inbox: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut consumed = 0;
    let result = loop {
        let (packet, length) = match mqtt::take_packet(&inbox[consumed..]) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        consumed += length;
        match packet {
            mqtt::Packet::PubAck { packet_id } => {
                let oldest = phone.in_flight.borrow().first_key_value().map(|(&k, _)| k);
                if let Some(oldest) = oldest {
                    on_sent(thread, phone, mqtt::client_id_of(packet_id, oldest));
                }
            }
            mqtt::Packet::Publish {
                packet_id, payload, ..
            } => {
                if let Some(packet_id) = packet_id {
                    phone.pubacks.borrow_mut().push(packet_id);
                }
                match mqtt::split_payload(payload) {
                    Ok((from, client_id, body)) => on_message(thread, phone, from, client_id, body),
                    Err(error) => break Err(error),
                }
            }
            mqtt::Packet::ConnAck { .. } | mqtt::Packet::SubAck { .. } | mqtt::Packet::PingResp => {
            }
        }
    };
    inbox.drain(..consumed);
    if !phone.pubacks.borrow().is_empty() {
        phone.wake();
    }
    result
}
