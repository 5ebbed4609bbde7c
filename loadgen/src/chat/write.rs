//! A phone's writing half: new sends as the pacer (or the closed loop)
//! queues them, sends written again after a reconnect or a retryable
//! refusal, and acknowledgements.

use std::sync::atomic::Ordering::Relaxed;

use futures_lite::{io::WriteHalf, AsyncWriteExt};
use wire::{encode_client, ClientFrame, Phone};

use super::phone::{InFlight, PhoneState};
use super::thread::Thread;
use crate::connection::BoxIo;
use crate::dial::Protocol;
use crate::mqtt;

/// Appends one send in the target's protocol; `again` marks a send written
/// again after a reconnect.
pub(super) fn encode_send(
    thread: &Thread,
    phone: &PhoneState,
    client_id: u64,
    to: Phone,
    body: &[u8],
    again: bool,
    bytes: &mut Vec<u8>,
) {
    match thread.dialer.protocol {
        Protocol::Isle => {
            encode_client(
                &ClientFrame::Send {
                    client_id,
                    to,
                    body,
                },
                bytes,
            );
        }
        Protocol::Mqtt => mqtt::encode_publish(
            &mqtt::topic(to),
            mqtt::packet_id(client_id),
            again,
            phone.number,
            client_id,
            body,
            bytes,
        ),
    }
}

/// Whether the phone may write a send with this client id now. MQTT packet
/// ids repeat every 65,535 sends, so a send waits while the one that long
/// before it is still unanswered (`mqtt::client_id_of` relies on this).
pub(super) fn may_send(thread: &Thread, phone: &PhoneState) -> bool {
    thread.dialer.protocol != Protocol::Mqtt
        || phone
            .in_flight
            .borrow()
            .first_key_value()
            .is_none_or(|(&oldest, _)| {
                phone.next_client_id.get() < oldest + u64::from(mqtt::PACKET_IDS)
            })
}

/// Writes what the phone has to say on one connection until it ends, the
/// phone hangs up, or the run finishes.
pub(super) async fn write_loop(thread: &Thread, phone: &PhoneState, mut writer: WriteHalf<BoxIo>) {
    let mut bytes = Vec::new();
    let mut body = vec![0u8; thread.args.body_bytes];
    loop {
        write_again(thread, phone, &mut body, &mut bytes);
        write_new(thread, phone, &mut body, &mut bytes);
        let ack = phone.ack_up_to.replace(0);
        if ack > 0 {
            encode_client(&ClientFrame::Ack { up_to: ack }, &mut bytes);
        }
        // A PUBACK lost with its connection is not written again: the
        // broker sends the message again on the next one (same id, DUP
        // set), and the phone acknowledges that copy.
        for packet_id in phone.pubacks.borrow_mut().drain(..) {
            mqtt::encode_puback(packet_id, &mut bytes);
        }
        if !bytes.is_empty() {
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                // The ack may not have arrived: send it again next time.
                phone.ack_up_to.set(phone.ack_up_to.get().max(ack));
                thread.shared.disconnects.fetch_add(1, Relaxed);
                return;
            }
            bytes.clear();
            continue;
        }
        if thread.shared.finished.load(Relaxed) || phone.hang_up.replace(false) {
            if !thread.shared.finished.load(Relaxed) {
                thread.shared.hangups.fetch_add(1, Relaxed);
            }
            let _ = writer.close().await;
            return;
        }
        futures_lite::future::poll_fn(|cx| {
            if has_work(thread, phone) {
                std::task::Poll::Ready(())
            } else {
                *phone.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// Whether the writer has something to do: sends it may write, refused
/// sends due again, acknowledgements, a hang-up, or the end of the run.
fn has_work(thread: &Thread, phone: &PhoneState) -> bool {
    !phone.queue.borrow().is_empty()
        && !thread.shared.stop_sending.load(Relaxed)
        && may_send(thread, phone)
        || phone.retry_due.get()
        || phone.ack_up_to.get() > 0
        || !phone.pubacks.borrow().is_empty()
        || phone.hang_up.get()
        || thread.shared.finished.load(Relaxed)
}

/// Appends the sends to write again: after a reconnect every unanswered
/// one, and when a retry is due every refused one.
fn write_again(thread: &Thread, phone: &PhoneState, body: &mut [u8], bytes: &mut Vec<u8>) {
    if phone.resend.replace(false) {
        // Unanswered on the last connection: the server may or may not
        // have stored them, and recognises the client id if it has.
        // Refused ones go too, in their place.
        phone.refused.borrow_mut().clear();
        for (&client_id, sent) in phone.in_flight.borrow().iter() {
            body[..8].copy_from_slice(&sent.intended_ns.to_le_bytes());
            encode_send(thread, phone, client_id, sent.to, body, true, bytes);
            thread.shared.resent.fetch_add(1, Relaxed);
        }
    }
    if phone.retry_due.replace(false) {
        // The order rule: every refused send again, oldest first, so
        // each conversation resumes from its refused one on.
        let refused = std::mem::take(&mut *phone.refused.borrow_mut());
        let in_flight = phone.in_flight.borrow();
        for client_id in refused {
            if let Some(sent) = in_flight.get(&client_id) {
                body[..8].copy_from_slice(&sent.intended_ns.to_le_bytes());
                encode_send(thread, phone, client_id, sent.to, body, true, bytes);
            }
        }
    }
}

/// Appends the queued sends the phone may write now, each to a random
/// other phone of the run, with its intended time in the body.
fn write_new(thread: &Thread, phone: &PhoneState, body: &mut [u8], bytes: &mut Vec<u8>) {
    let total = thread.args.phones as u64;
    let closed_loop = thread.args.rate == 0;
    let stop = thread.shared.stop_sending.load(Relaxed);
    let mut queue = phone.queue.borrow_mut();
    while let Some(intended) = if stop || !may_send(thread, phone) {
        None
    } else {
        queue.pop_front()
    } {
        let client_id = phone.next_client_id.get();
        phone.next_client_id.set(client_id + 1);
        let mut to = thread.random(total.max(2) - 1);
        if to >= u64::from(phone.index) {
            to += 1;
        }
        let to = Phone::from_u64(thread.first + to.min(total - 1)).expect("range checked at start");
        let now = thread.now_ns();
        let intended = if closed_loop { now } else { intended };
        if intended >= thread.warmup_end_ns.get() {
            let lag = now.saturating_sub(intended).max(1);
            let _ = thread.send_lag.borrow_mut().record(lag);
        }
        // The order rule: nothing new in a conversation whose refused
        // send waits to be written again; this one goes after it, in the
        // next retry.
        if phone.in_flight.borrow().is_empty() {
            // The phone begins waiting for an answer now.
            phone.answer_mark_ns.set(now);
        }
        let waits = phone.refused_to(to);
        if !waits {
            body[..8].copy_from_slice(&intended.to_le_bytes());
            encode_send(thread, phone, client_id, to, body, false, bytes);
        }
        phone.in_flight.borrow_mut().insert(
            client_id,
            InFlight {
                intended_ns: intended,
                to,
            },
        );
        if waits {
            phone.refused.borrow_mut().insert(client_id);
        }
        thread.shared.sent.fetch_add(1, Relaxed);
    }
}
