//! A plain download of one object from an S3-compatible server with `object_store`, the
//! baseline of `benches/restore-test-vs-shell.sh`: no listing, no format sniffing, no hashing.
//! Keys come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
//!
//! usage: cargo run --release --example s3_get -- ENDPOINT BUCKET KEY OUT
//! prints: BYTES MILLISECONDS

use std::time::Instant;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, bucket, key, out] = args.as_slice() else {
        anyhow::bail!("usage: s3_get ENDPOINT BUCKET KEY OUT");
    };
    drillrig::util::tls_provider();
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .build()?;
    let started = Instant::now();
    let got = store
        .get(&object_store::path::Path::from(key.as_str()))
        .await?;
    let mut stream = got.into_stream();
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(out).await?);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    println!("{bytes} {}", started.elapsed().as_millis());
    Ok(())
}
