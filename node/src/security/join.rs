//! Admission of new members into a zero-config cluster.
//!
//! The joining node holds a token `K10<CA hash>::<secret>`. It opens TLS to a member and
//! accepts the member's certificate only if the chain contains the CA with that hash and the
//! certificate is valid under it for the address dialled; only then does it send the secret,
//! with a certificate signing request for a key it generated (the key never leaves it). The
//! member checks the secret in constant time, signs the request, adds the node as a learner
//! through the ordinary membership path and answers with the certificate, the CA and the
//! member list. A wrong secret changes nothing.

use std::time::Duration;

use anyhow::{bail, Context};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use super::pki::{self, CertAndKey, Identity, JoinToken, Pki};
use super::tls::{join_client_config, plain_uri, TlsConnector};
use crate::api::SharedNode;
use crate::coalesce::Connection;
use crate::proto::cairnpb::join_client::JoinClient;
use crate::proto::cairnpb::join_server::Join;
use crate::proto::cairnpb::{
    JoinRequest, JoinResponse, JoinedMember, ShareTokenRequest, ShareTokenResponse,
};
use crate::raft::membership::MembershipChange;

/// What a member answers to a wrong secret. The same answer whatever was wrong with it.
pub const REFUSED: &str =
    "cairn: join refused: the token's secret is wrong or has been rotated (ask a member for `cairn token`)";

/// How long a joining node waits for a member to connect and to admit it.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The join service on a member's peer URL.
pub struct JoinService {
    node: SharedNode,
    pki: Pki,
}

impl JoinService {
    pub fn new(node: SharedNode, pki: Pki) -> JoinService {
        JoinService { node, pki }
    }
}

/// The host of a URL, for the certificate's names.
fn url_host(url: &str) -> Option<String> {
    url::Url::parse(url).ok()?.host_str().map(|host| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    })
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let request = request.into_inner();
        let token = self.pki.token().map_err(|error| {
            tracing::error!(%error, "cannot read the join token");
            Status::unavailable("cairn: this member cannot read its join token")
        })?;
        if !token.secret_matches(&request.secret) {
            tracing::warn!(name = %request.name, "refused a join with a wrong token");
            return Err(Status::permission_denied(REFUSED));
        }
        if request.name.is_empty() || request.peer_urls.is_empty() {
            return Err(Status::invalid_argument(
                "cairn: a joining member needs a name and peer URLs",
            ));
        }
        for url in request.peer_urls.iter().chain(&request.client_urls) {
            if url_host(url).is_none() {
                return Err(Status::invalid_argument(format!(
                    "cairn: {url:?} is not a URL with a host"
                )));
            }
        }
        let mut hosts: Vec<String> = request
            .peer_urls
            .iter()
            .chain(&request.client_urls)
            .filter_map(|url| url_host(url))
            .collect();
        hosts.extend(request.hosts.iter().cloned());
        let identity = Identity {
            name: request.name.clone(),
            hosts,
        };
        let certificate = self
            .pki
            .sign_member_request(&request.csr, &identity)
            .map_err(|e| Status::invalid_argument(format!("cairn: {e:#}")))?;
        let member_id = crate::config::member_id(&request.peer_urls, &self.node.cluster_token);
        let member = crate::raft::Member {
            name: request.name.clone(),
            peer_urls: request.peer_urls.clone(),
            client_urls: request.client_urls.clone(),
            // Promoted by the member upkeep once caught up, keeping the voters odd.
            wants_vote: false,
        };
        let added = crate::api::cluster::change(
            &self.node,
            MembershipChange::Add {
                id: member_id,
                member: member.clone(),
            },
        )
        .await;
        if let Err(status) = added {
            // A node that was admitted but lost the answer asks again; it is still a
            // learner, as it never ran. A voter with these URLs has a log to keep: it must be
            // removed before a node with an empty data dir takes its place.
            let rejoining = crate::api::cluster::members(&self.node)
                .iter()
                .any(|listed| {
                    listed.id == member_id
                        && listed.peer_ur_ls == member.peer_urls
                        && listed.is_learner
                });
            if !rejoining {
                return Err(status);
            }
        }
        tracing::info!(name = %request.name, member_id = %format!("{member_id:x}"), "admitted a member");
        let ca = self
            .pki
            .ca()
            .map_err(|e| Status::internal(format!("cairn: {e:#}")))?;
        let members = crate::api::cluster::members(&self.node)
            .into_iter()
            .map(|listed| JoinedMember {
                name: listed.name,
                peer_urls: listed.peer_ur_ls,
                is_learner: listed.is_learner,
            })
            .collect();
        Ok(Response::new(JoinResponse {
            certificate,
            ca_certificate: ca.cert_pem,
            ca_key: ca.key_pem,
            cluster_token: self.node.cluster_token.clone(),
            member_id,
            members,
            join_token: token.to_string(),
        }))
    }

    async fn share_token(
        &self,
        request: Request<ShareTokenRequest>,
    ) -> Result<Response<ShareTokenResponse>, Status> {
        let from_member = request
            .extensions()
            .get::<Connection>()
            .is_some_and(|connection| connection.identity.member);
        if !from_member {
            return Err(Status::permission_denied(
                "cairn: only members may change the join token",
            ));
        }
        let request = request.into_inner();
        let token: JoinToken = request
            .token
            .parse()
            .map_err(|e| Status::invalid_argument(format!("cairn: {e:#}")))?;
        let own = self
            .pki
            .token()
            .map_err(|e| Status::unavailable(format!("cairn: {e:#}")))?;
        if token.ca_hash != own.ca_hash {
            return Err(Status::invalid_argument(
                "cairn: the token names another cluster's CA",
            ));
        }
        self.pki
            .save_token(&token)
            .map_err(|e| Status::internal(format!("cairn: {e:#}")))?;
        tracing::info!("the join token was rotated");
        let mut unreached = Vec::new();
        if request.spread {
            let others: Vec<crate::raft::Member> = {
                let metrics = self.node.raft.metrics();
                let metrics = metrics.borrow();
                metrics
                    .membership_config
                    .membership()
                    .nodes()
                    .filter(|(id, _)| **id != self.node.member_id)
                    .map(|(_, member)| member.clone())
                    .collect()
            };
            for member in others {
                let shared = match self.node.peers.channel(&member) {
                    Ok(channel) => JoinClient::new(channel)
                        .share_token(ShareTokenRequest {
                            token: request.token.clone(),
                            spread: false,
                        })
                        .await
                        .map(drop)
                        .map_err(|status| status.message().to_owned()),
                    Err(error) => Err(error),
                };
                if let Err(error) = shared {
                    unreached.push(format!("{}: {error}", member.name));
                }
            }
        }
        Ok(Response::new(ShareTokenResponse { unreached }))
    }
}

/// Hands a rotated token to the member running on `data_dir` (at its advertised `peer_url`),
/// which stores it and passes it on to every other member. Returns the members not reached.
pub async fn share_rotated_token(
    pki: &Pki,
    peer_url: &str,
    token: &JoinToken,
) -> anyhow::Result<Vec<String>> {
    let slot = super::tls::CertSlot::load(&pki.node_cert_path(), &pki.node_key_path(), None)?;
    let config = super::tls::peer_client_config(slot, &pki.ca_cert_path())?;
    let channel = Endpoint::from_shared(plain_uri(peer_url))
        .with_context(|| format!("{peer_url:?} is not a URL"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(JOIN_TIMEOUT)
        .connect_with_connector(TlsConnector::new(config))
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot reach this member at {peer_url}: {}",
                full_chain(&error)
            )
        })?;
    let answer = JoinClient::new(channel)
        .share_token(ShareTokenRequest {
            token: token.to_string(),
            spread: true,
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    Ok(answer.into_inner().unreached)
}

/// What a node asks to join as.
pub struct Applicant {
    pub identity: Identity,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// The error and its causes on one line: tonic's transport errors keep the TLS reason in
/// their sources.
pub(crate) fn full_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Asks the member at `peer_url` to admit `applicant`, and installs what it answers in `pki`.
/// Returns the answer (the cluster token, the member list).
pub async fn join_through(
    peer_url: &str,
    token: &JoinToken,
    applicant: &Applicant,
    pki: &Pki,
) -> anyhow::Result<JoinResponse> {
    let (key, csr) = pki::member_request(&applicant.identity)?;
    let endpoint = Endpoint::from_shared(plain_uri(peer_url))
        .with_context(|| format!("{peer_url:?} is not a URL"))?
        .connect_timeout(JOIN_TIMEOUT)
        .timeout(JOIN_TIMEOUT);
    let channel = endpoint
        .connect_with_connector(TlsConnector::new(join_client_config(token.ca_hash)?))
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot open a verified TLS connection to {peer_url}: {}",
                full_chain(&error)
            )
        })?;
    let answer = JoinClient::new(channel)
        .join(JoinRequest {
            secret: token.secret.clone(),
            csr,
            name: applicant.identity.name.clone(),
            peer_urls: applicant.peer_urls.clone(),
            client_urls: applicant.client_urls.clone(),
            hosts: applicant.identity.hosts.clone(),
        })
        .await;
    let answer = match answer {
        Ok(answer) => answer.into_inner(),
        Err(status) if status.code() == tonic::Code::PermissionDenied => {
            bail!("{}", status.message())
        }
        Err(status) => bail!(
            "{peer_url} did not admit this node: {} ({:?})",
            status.message(),
            status.code()
        ),
    };
    let ca_der = pki::first_cert_der(&answer.ca_certificate)?;
    if pki::cert_hash(&ca_der) != token.ca_hash {
        bail!("{peer_url} answered with a CA that is not the one named in the token");
    }
    let join_token: JoinToken = answer
        .join_token
        .parse()
        .context("the member answered with an unreadable join token")?;
    pki.install_joined(
        &CertAndKey {
            cert_pem: answer.ca_certificate.clone(),
            key_pem: answer.ca_key.clone(),
        },
        &CertAndKey {
            cert_pem: answer.certificate.clone(),
            key_pem: key.serialize_pem(),
        },
        &join_token,
    )?;
    Ok(answer)
}
