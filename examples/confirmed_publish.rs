//! Baseline for the RabbitMQ workload's density: a plain loop that publishes one persistent
//! message and waits for its confirm, then the next, for a number of seconds. No ledger, no
//! clock reads beyond the loop's own. Used by `benches/workload-density.sh`.
//!
//! usage: AMQP_URI=amqp://user:pass@127.0.0.1:PORT/VHOST confirmed_publish EXCHANGE ROUTING_KEY SECONDS

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("AMQP_URI").map_err(|_| "set AMQP_URI")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [exchange, routing_key, seconds] = args.as_slice() else {
        return Err("usage: confirmed_publish EXCHANGE ROUTING_KEY SECONDS".into());
    };
    let run_for = Duration::from_secs_f64(seconds.parse()?);
    let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut confirmed = 0u64;
    while started.elapsed() < run_for {
        let body = format!("baseline message {confirmed}");
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("baseline-{confirmed}").into());
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?
            .await?;
        if !matches!(confirm, Confirmation::Ack(_)) {
            return Err("the broker did not confirm a message".into());
        }
        confirmed += 1;
    }
    let rate = confirmed as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0}");
    connection.close(200, "done".into()).await?;
    Ok(())
}
