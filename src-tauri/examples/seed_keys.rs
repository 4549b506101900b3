//! Writes many keys into a cluster for the console's load measurement:
//! `seed_keys ENDPOINT COUNT` puts COUNT keys shaped like Kubernetes' layout,
//! `/registry/configmaps/ns-NNN/cm-NNNNNN`, 100 namespaces, in transactions of 100 puts.

use etcd_client::{Client, Txn, TxnOp};

const PUTS_PER_TXN: usize = 100;
const WRITERS: usize = 8;

fn key(index: usize) -> String {
    format!("/registry/configmaps/ns-{:03}/cm-{index:06}", index % 100)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(endpoint), Some(count)) = (args.next(), args.next()) else {
        return Err("usage: seed_keys ENDPOINT COUNT".into());
    };
    let count: usize = count.parse()?;
    let client = Client::connect([endpoint], None).await?;
    let started = std::time::Instant::now();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = client.clone();
        writers.push(tokio::spawn(async move {
            // Writer w takes batches w, w + WRITERS, ...
            let mut batch = writer;
            while batch * PUTS_PER_TXN < count {
                let first = batch * PUTS_PER_TXN;
                let puts: Vec<TxnOp> = (first..(first + PUTS_PER_TXN).min(count))
                    .map(|index| TxnOp::put(key(index), format!("{{\"index\":{index}}}"), None))
                    .collect();
                client.txn(Txn::new().and_then(puts)).await?;
                batch += WRITERS;
            }
            Ok::<(), etcd_client::Error>(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    println!("seeded {count} keys in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
