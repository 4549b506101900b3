//! Writes keys into a cluster for the console's end-to-end test:
//! `seed_keys ENDPOINT COUNT` puts COUNT keys shaped like Kubernetes' layout,
//! `/registry/configmaps/ns-NNN/cm-NNNNNN`, 100 namespaces, in transactions of 100 puts;
//! `seed_keys ENDPOINT kubernetes` puts one ConfigMap as kube-apiserver stores it
//! (`k8s\0` + runtime.Unknown protobuf) at `/registry/configmaps/prod/app-settings`.

use etcd_client::{Client, Txn, TxnOp};

const PUTS_PER_TXN: usize = 100;
const WRITERS: usize = 8;

fn key(index: usize) -> String {
    format!("/registry/configmaps/ns-{:03}/cm-{index:06}", index % 100)
}

/// Protobuf wire encoding, just what a ConfigMap needs: varints and length-delimited fields.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value > 0x7f {
            self.0.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn bytes(mut self, field: u64, value: &[u8]) -> Self {
        self.varint(field << 3 | 2);
        self.varint(value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    fn text(self, field: u64, value: &str) -> Self {
        self.bytes(field, value.as_bytes())
    }

    fn message(self, field: u64, value: Message) -> Self {
        self.bytes(field, &value.0)
    }

    fn map_entry(self, field: u64, key: &str, value: &str) -> Self {
        self.message(field, Message::default().text(1, key).text(2, value))
    }
}

/// A v1 ConfigMap in Kubernetes' storage format (field numbers from k8s.io/api core/v1).
fn kubernetes_config_map() -> Vec<u8> {
    let mut created = Message::default();
    created.varint(1 << 3);
    created.varint(1_700_000_000);
    let metadata = Message::default()
        .text(1, "app-settings")
        .text(3, "prod")
        .text(5, "6f1c2a9e-1111-4c3b-9a8e-2a2b2c2d2e2f")
        .text(6, "4711")
        .message(8, created)
        .map_entry(11, "app", "shop");
    let config_map = Message::default()
        .message(1, metadata)
        .map_entry(2, "LOG_LEVEL", "debug")
        .map_entry(2, "config.yaml", "port: 8080\nworkers: 4\n");
    let unknown = Message::default()
        .message(1, Message::default().text(1, "v1").text(2, "ConfigMap"))
        .message(2, config_map)
        .text(4, "application/vnd.kubernetes.protobuf");
    [b"k8s\0".as_slice(), &unknown.0].concat()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(endpoint), Some(count)) = (args.next(), args.next()) else {
        return Err("usage: seed_keys ENDPOINT COUNT".into());
    };
    let mut client = Client::connect([endpoint], None).await?;
    if count == "kubernetes" {
        client
            .put(
                "/registry/configmaps/prod/app-settings",
                kubernetes_config_map(),
                None,
            )
            .await?;
        println!("seeded a Kubernetes ConfigMap");
        return Ok(());
    }
    let count: usize = count.parse()?;
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
    println!(
        "seeded {count} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
