// Typed wrappers around the backend's commands. Every command rejects with a
// `CommandError`: { kind, message, detail? }.

import { Channel, invoke } from "@tauri-apps/api/core";

export type ErrorKind =
  | "not_connected"
  | "unavailable"
  | "unauthorized"
  | "conflict"
  | "not_found"
  | "compacted"
  | "invalid_input"
  | "storage"
  | "server";

export interface CommandError {
  kind: ErrorKind;
  message: string;
  detail?: string;
}

/** Anything thrown by a command, or by the IPC layer itself, as a CommandError. */
export function asCommandError(error: unknown): CommandError {
  if (error && typeof error === "object" && "kind" in error && "message" in error) {
    return error as CommandError;
  }
  return { kind: "server", message: "Something went wrong inside the app.", detail: String(error) };
}

export interface TlsFiles {
  caFile: string | null;
  certFile: string | null;
  keyFile: string | null;
}

export interface ConnectionProfile {
  id: string;
  name: string;
  endpoints: string[];
  tls: TlsFiles | null;
  username: string | null;
}

export type SecretStorage = "keychain" | "session_only" | "none";

export interface ClusterSummary {
  connectionId: string;
  clusterId: string;
  memberId: string;
  revision: number;
  version: string;
  leaderId: string;
}

export interface KeyPage {
  keys: string[];
  more: boolean;
  revision: number;
}

export interface KeyDetail {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  version: number;
  lease: number;
}

export interface KeyVersion {
  modRevision: number;
  version: number;
  value: string;
}

export interface WatchEvent {
  kind: "put" | "delete";
  key: string;
  revision: number;
  value: string;
  prevValue: string | null;
}

export type WatchMessage =
  | { type: "events"; events: WatchEvent[] }
  | { type: "failed"; error: CommandError };

export type Role = "leader" | "follower" | "learner" | "unknown";
export type Health = "healthy" | "degraded" | "unavailable";

export interface MemberSample {
  id: string;
  name: string;
  clientUrls: string[];
  role: Role;
  raftTerm: number | null;
  raftIndex: number | null;
  appliedIndex: number | null;
  dbSize: number | null;
  version: string | null;
  lag: number | null;
  error: string | null;
}

export interface ClusterSample {
  takenAt: number;
  health: Health;
  leaderId: string | null;
  members: MemberSample[];
}

export type ClusterMessage =
  | { type: "sample"; sample: ClusterSample }
  | { type: "failed"; error: CommandError };

export const api = {
  listConnections: () => invoke<ConnectionProfile[]>("list_connections"),
  saveConnection: (profile: ConnectionProfile, password: string | null) =>
    invoke<{ profile: ConnectionProfile; secretStorage: SecretStorage }>("save_connection", {
      draft: { profile, password },
    }),
  deleteConnection: (id: string) => invoke<void>("delete_connection", { id }),
  connect: (id: string) => invoke<ClusterSummary>("connect", { id }),
  disconnect: () => invoke<void>("disconnect"),
  listKeys: (prefix: string, after: string | null, limit: number, atRevision: number | null) =>
    invoke<KeyPage>("list_keys", { prefix, after, limit, atRevision }),
  getKey: (key: string) => invoke<KeyDetail>("get_key", { key }),
  putKey: (key: string, value: string, expectedModRevision: number) =>
    invoke<KeyDetail>("put_key", { key, value, expectedModRevision }),
  deleteKey: (key: string, expectedModRevision: number) =>
    invoke<void>("delete_key", { key, expectedModRevision }),
  deleteKeysWithPrefix: (prefix: string) => invoke<number>("delete_keys_with_prefix", { prefix }),
  keyHistory: (key: string) => invoke<KeyVersion[]>("key_history", { key }),
  /** Starts a watch; the returned id stops it with `stopStream`. */
  startWatch: (key: string, prefix: boolean, onMessage: (message: WatchMessage) => void) => {
    const channel = new Channel<WatchMessage>();
    channel.onmessage = onMessage;
    return invoke<number>("start_watch", { key, prefix, onMessage: channel });
  },
  startClusterSampling: (onMessage: (message: ClusterMessage) => void) => {
    const channel = new Channel<ClusterMessage>();
    channel.onmessage = onMessage;
    return invoke<number>("start_cluster_sampling", { onMessage: channel });
  },
  stopStream: (streamId: number) => invoke<void>("stop_stream", { streamId }),
};
