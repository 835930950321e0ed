//! Baseline for the RabbitMQ recovery benchmark: a plain client that waits until the broker
//! takes an AMQP connection and every queue the messages name exists, republishes a message
//! export (`messages.jsonl`: `queue`, `message_id`, `body` in hex, `vhost`) through the default
//! exchange with publisher confirms, then prints each queue's depth as `queue depth` lines. No
//! ledger, no digests. Used by `benches/recovery-vs-shell.sh rabbitmq`.
//!
//! usage: AMQP_URI=amqp://user:pass@127.0.0.1:PORT/VHOST republish MESSAGES.jsonl TIMEOUT_SECONDS

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("AMQP_URI").map_err(|_| "set AMQP_URI")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [messages, timeout] = args.as_slice() else {
        return Err("usage: republish MESSAGES.jsonl TIMEOUT_SECONDS".into());
    };
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.parse()?);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(messages)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let queues: BTreeSet<String> = lines
        .iter()
        .filter_map(|m| m["queue"].as_str().map(String::from))
        .collect();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };

    // Until the broker answers and every queue is there (a passive declare that fails closes
    // the channel, so each attempt opens its own connection).
    let (connection, channel) = loop {
        let attempt = async {
            let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            for q in &queues {
                channel
                    .queue_declare(q.as_str().into(), passive, FieldTable::default())
                    .await?;
            }
            Ok::<_, lapin::Error>((connection, channel))
        };
        match attempt.await {
            Ok(ready) => break ready,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("the broker was not ready in time: {e}").into()),
        }
    };

    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut confirms = Vec::with_capacity(lines.len());
    for m in &lines {
        let (Some(queue), Some(id), Some(body)) = (
            m["queue"].as_str(),
            m["message_id"].as_str(),
            m["body"].as_str(),
        ) else {
            return Err(format!("not a message: {m}").into());
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into());
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &hex::decode(body)?,
                    properties,
                )
                .await?,
        );
    }
    for confirm in confirms {
        if !matches!(confirm.await?, Confirmation::Ack(_)) {
            return Err("the broker did not confirm a message".into());
        }
    }
    for q in &queues {
        let declared = channel
            .queue_declare(q.as_str().into(), passive, FieldTable::default())
            .await?;
        println!("{q} {}", declared.message_count());
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}
