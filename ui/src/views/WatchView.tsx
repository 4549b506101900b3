import { useEffect, useRef, useState } from "react";
import { api, asCommandError, CommandError, WatchEvent } from "../lib/api";
import { base64ToBytes, valueAsText } from "../lib/decode";
import { DiffView } from "./DiffView";

/** The newest events kept in the list; older ones scroll off. */
const MAX_EVENTS = 1000;

interface Props {
  onError: (error: CommandError) => void;
}

/** Watch a key or a prefix live: events with their revision and a diff of prev → new. */
export function WatchView({ onError }: Props) {
  const [key, setKey] = useState("/");
  const [prefix, setPrefix] = useState(true);
  const [streamId, setStreamId] = useState<number | null>(null);
  const [watching, setWatching] = useState<string | null>(null);
  const [events, setEvents] = useState<WatchEvent[]>([]);
  const [paused, setPaused] = useState(false);
  const [filter, setFilter] = useState("");
  const [open, setOpen] = useState<number | null>(null);
  // Events that arrive while paused wait here and join the list on resume.
  const held = useRef<WatchEvent[]>([]);
  const pausedRef = useRef(false);
  pausedRef.current = paused;

  async function start() {
    if (streamId !== null) await api.stopStream(streamId);
    try {
      const id = await api.startWatch(key, prefix, (message) => {
        if (message.type === "failed") {
          onError(message.error);
          setStreamId(null);
          return;
        }
        if (pausedRef.current) held.current.push(...message.events);
        else setEvents((current) => [...message.events.slice().reverse(), ...current].slice(0, MAX_EVENTS));
      });
      setStreamId(id);
      setWatching(`${key}${prefix ? " (prefix)" : ""}`);
    } catch (error) {
      onError(asCommandError(error));
    }
  }

  async function stop() {
    if (streamId === null) return;
    await api.stopStream(streamId);
    setStreamId(null);
  }

  // The watch ends when the view closes.
  useEffect(() => {
    return () => {
      if (streamId !== null) void api.stopStream(streamId);
    };
  }, [streamId]);

  function togglePause() {
    if (paused) {
      const waiting = held.current.reverse();
      held.current = [];
      setEvents((current) => [...waiting, ...current].slice(0, MAX_EVENTS));
    }
    setPaused(!paused);
  }

  const needle = filter.trim().toLowerCase();
  const shown = needle
    ? events.filter((event) => event.key.toLowerCase().includes(needle) || event.kind === needle)
    : events;

  return (
    <div className="watch-view">
      <div className="toolbar">
        <form
          className="search"
          onSubmit={(event) => {
            event.preventDefault();
            void start();
          }}
        >
          <input value={key} onChange={(e) => setKey(e.target.value)} placeholder="Key or prefix" data-testid="watch-key" />
          <label className="check">
            <input type="checkbox" checked={prefix} onChange={(e) => setPrefix(e.target.checked)} /> prefix
          </label>
          <button type="submit" className="primary" data-testid="start-watch">
            {streamId === null ? "Watch" : "Restart"}
          </button>
        </form>
        <button onClick={() => void stop()} disabled={streamId === null}>
          Stop
        </button>
        <button onClick={togglePause} data-testid="pause-watch">
          {paused ? `Resume (${held.current.length} held)` : "Pause"}
        </button>
        <button onClick={() => setEvents([])}>Clear</button>
        <input className="filter" value={filter} onChange={(e) => setFilter(e.target.value)} placeholder="Filter: key text, put or delete" />
      </div>
      <div className="muted status-line" data-testid="watch-status">
        {streamId === null ? "Not watching." : `Watching ${watching}`} · {events.length} events
      </div>
      <table className="events" data-testid="watch-events">
        <thead>
          <tr>
            <th>type</th>
            <th>revision</th>
            <th>key</th>
            <th>value</th>
          </tr>
        </thead>
        <tbody>
          {shown.map((event, index) => {
            const before = event.prevValue === null ? "" : valueAsText(base64ToBytes(event.prevValue));
            const after = event.kind === "delete" ? "" : valueAsText(base64ToBytes(event.value));
            const expandedRow = open === event.revision;
            return [
              <tr
                key={`${event.revision}-${event.key}-${index}`}
                className={`event ${event.kind}`}
                data-revision={event.revision}
                onClick={() => setOpen(expandedRow ? null : event.revision)}
              >
                <td>
                  <span className={`badge ${event.kind}`}>{event.kind.toUpperCase()}</span>
                </td>
                <td>{event.revision}</td>
                <td className="mono">{event.key}</td>
                <td className="mono truncate" data-testid="event-value">
                  {event.prevValue !== null && event.kind === "put" ? `${truncate(before)} → ${truncate(after)}` : truncate(after || before)}
                </td>
              </tr>,
              expandedRow && (
                <tr key={`diff-${event.revision}-${index}`} className="event-diff">
                  <td colSpan={4}>
                    <DiffView before={before} after={after} />
                  </td>
                </tr>
              ),
            ];
          })}
        </tbody>
      </table>
      {shown.length === 0 && <div className="empty muted">No events yet. Changes to the watched keys appear here as they happen.</div>}
    </div>
  );
}

function truncate(text: string): string {
  const line = text.replace(/\s+/g, " ");
  return line.length > 80 ? `${line.slice(0, 80)}…` : line;
}
