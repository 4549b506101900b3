import { useState } from "react";
import { api, asCommandError, CommandError, ConnectionProfile } from "../lib/api";

interface Props {
  connections: ConnectionProfile[];
  activeId: string | null;
  onChanged: () => void;
  onConnect: (id: string) => void;
  onError: (error: CommandError) => void;
  onNotice: (text: string) => void;
}

interface Draft {
  id: string;
  name: string;
  endpoints: string;
  username: string;
  password: string;
  useTls: boolean;
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** A new connection's id: unique enough for one user's list (crypto.randomUUID needs a
 * secure context, which the app's custom scheme is not on every platform). */
function newConnectionId(): string {
  return `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

const emptyDraft = (): Draft => ({
  id: newConnectionId(),
  name: "",
  endpoints: "http://127.0.0.1:2379",
  username: "",
  password: "",
  useTls: false,
  caFile: "",
  certFile: "",
  keyFile: "",
});

function toProfile(draft: Draft): ConnectionProfile {
  const orNull = (text: string) => (text.trim() === "" ? null : text.trim());
  return {
    id: draft.id,
    name: draft.name.trim(),
    endpoints: draft.endpoints.split(/[\s,]+/).filter((endpoint) => endpoint !== ""),
    username: orNull(draft.username),
    tls: draft.useTls
      ? { caFile: orNull(draft.caFile), certFile: orNull(draft.certFile), keyFile: orNull(draft.keyFile) }
      : null,
  };
}

function fromProfile(profile: ConnectionProfile): Draft {
  return {
    id: profile.id,
    name: profile.name,
    endpoints: profile.endpoints.join(", "),
    username: profile.username ?? "",
    password: "",
    useTls: profile.tls !== null,
    caFile: profile.tls?.caFile ?? "",
    certFile: profile.tls?.certFile ?? "",
    keyFile: profile.tls?.keyFile ?? "",
  };
}

/** Saved clusters: pick one to connect, or add and edit them. */
export function ConnectionsPanel({ connections, activeId, onChanged, onConnect, onError, onNotice }: Props) {
  const [draft, setDraft] = useState<Draft | null>(connections.length === 0 ? emptyDraft() : null);
  const field = (name: keyof Draft) => ({
    value: String(draft?.[name] ?? ""),
    onChange: (event: React.ChangeEvent<HTMLInputElement>) =>
      setDraft((current) => current && { ...current, [name]: event.target.value }),
  });

  async function save(connectAfter: boolean) {
    if (!draft) return;
    try {
      // An empty password field on an existing connection keeps the stored password.
      const password = draft.password === "" ? null : draft.password;
      const saved = await api.saveConnection(toProfile(draft), password);
      if (saved.secretStorage === "session_only") {
        onNotice("No system keychain is available: the password is kept only until the app closes.");
      }
      setDraft(null);
      onChanged();
      if (connectAfter) onConnect(saved.profile.id);
    } catch (error) {
      onError(asCommandError(error));
    }
  }

  async function remove(id: string) {
    try {
      await api.deleteConnection(id);
      onChanged();
    } catch (error) {
      onError(asCommandError(error));
    }
  }

  return (
    <div className="connections">
      <div className="section-title">
        <span>Clusters</span>
        <button className="ghost" onClick={() => setDraft(emptyDraft())} title="Add a cluster" data-testid="add-connection">
          +
        </button>
      </div>
      <ul className="connection-list">
        {connections.map((profile) => (
          <li key={profile.id} className={profile.id === activeId ? "active" : ""}>
            <button className="connection-name" onClick={() => onConnect(profile.id)} data-testid="connect" title={profile.endpoints.join(", ")}>
              <span className={profile.id === activeId ? "dot connected" : "dot"} /> {profile.name}
            </button>
            <button className="ghost" onClick={() => setDraft(fromProfile(profile))} title="Edit">
              ✎
            </button>
            <button className="ghost" onClick={() => void remove(profile.id)} title="Forget this cluster">
              ×
            </button>
          </li>
        ))}
      </ul>
      {draft && (
        <form
          className="connection-form"
          data-testid="connection-form"
          onSubmit={(event) => {
            event.preventDefault();
            void save(true);
          }}
        >
          <label>
            Name
            <input {...field("name")} placeholder="production" data-testid="connection-name" autoFocus />
          </label>
          <label>
            Endpoints
            <input {...field("endpoints")} placeholder="http://10.0.0.1:2379, http://10.0.0.2:2379" data-testid="connection-endpoints" />
          </label>
          <label>
            User (optional)
            <input {...field("username")} autoComplete="off" />
          </label>
          <label>
            Password
            <input {...field("password")} type="password" autoComplete="off" placeholder="kept in the system keychain" />
          </label>
          <label className="check">
            <input
              type="checkbox"
              checked={draft.useTls}
              onChange={(event) => setDraft({ ...draft, useTls: event.target.checked })}
            />
            TLS
          </label>
          {draft.useTls && (
            <>
              <label>
                CA certificate (PEM file)
                <input {...field("caFile")} placeholder="/etc/cairn/ca.pem" />
              </label>
              <label>
                Client certificate (PEM file)
                <input {...field("certFile")} />
              </label>
              <label>
                Client key (PEM file)
                <input {...field("keyFile")} />
              </label>
            </>
          )}
          <div className="actions">
            <button type="button" onClick={() => setDraft(null)}>
              Cancel
            </button>
            <button type="button" onClick={() => void save(false)}>
              Save
            </button>
            <button type="submit" className="primary" data-testid="save-and-connect">
              Save &amp; connect
            </button>
          </div>
        </form>
      )}
    </div>
  );
}
