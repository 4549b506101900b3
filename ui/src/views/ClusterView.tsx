import { useEffect, useRef, useState } from "react";
import uPlot from "uplot";
import { api, asCommandError, ClusterSample, CommandError } from "../lib/api";
import { formatBytes, lagSeries, WINDOW } from "../lib/samples";

const LINE_COLOURS = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16"];

const HEALTH_TEXT = {
  healthy: "Healthy: a leader, and every member answers",
  degraded: "Degraded: some members do not answer",
  unavailable: "Unavailable: no leader, writes will fail",
};

interface Props {
  /** The chart is redrawn with the theme's colours when it changes. */
  theme: string;
  onError: (error: CommandError) => void;
}

/** Members, their raft state and lag, sampled every second while the view is open. */
export function ClusterView({ theme, onError }: Props) {
  const [samples, setSamples] = useState<ClusterSample[]>([]);
  const chartBox = useRef<HTMLDivElement>(null);
  const chart = useRef<uPlot | null>(null);
  const chartMembers = useRef("");

  useEffect(() => {
    let streamId: number | null = null;
    let closed = false;
    api
      .startClusterSampling((message) => {
        if (message.type === "failed") onError(message.error);
        else setSamples((current) => [...current.slice(-(WINDOW - 1)), message.sample]);
      })
      .then((id) => {
        // The view may have closed while the command was in flight.
        if (closed) void api.stopStream(id);
        else streamId = id;
      })
      .catch((error) => onError(asCommandError(error)));
    return () => {
      closed = true;
      if (streamId !== null) void api.stopStream(streamId);
    };
  }, [onError]);

  useEffect(() => {
    const box = chartBox.current;
    if (!box || samples.length === 0) return;
    const series = lagSeries(samples);
    const signature = `${theme}:${series.memberIds.join(",")}`;
    if (!chart.current || chartMembers.current !== signature) {
      chart.current?.destroy();
      chartMembers.current = signature;
      // uPlot draws on a canvas, which does not resolve CSS variables or currentColor.
      const axisColour = getComputedStyle(document.documentElement).getPropertyValue("--muted").trim();
      chart.current = new uPlot(
        {
          width: Math.max(400, box.clientWidth),
          height: 220,
          scales: { y: { range: (_u, _min, max) => [0, Math.max(10, max)] } },
          axes: [
            { stroke: axisColour, grid: { stroke: "rgba(128,128,128,0.2)" } },
            { stroke: axisColour, grid: { stroke: "rgba(128,128,128,0.2)" }, label: "entries behind leader" },
          ],
          series: [
            {},
            ...series.names.map((name, index) => ({
              label: name,
              stroke: LINE_COLOURS[index % LINE_COLOURS.length],
              width: 2,
              spanGaps: false,
            })),
          ],
        },
        series.columns,
        box,
      );
    } else {
      chart.current.setData(series.columns);
    }
  }, [samples, theme]);

  useEffect(() => () => chart.current?.destroy(), []);

  const latest = samples[samples.length - 1];
  return (
    <div className="cluster-view">
      {latest ? (
        <div className={`health health-${latest.health}`} data-testid="cluster-health">
          <span className="dot" /> {HEALTH_TEXT[latest.health]} · {latest.members.length} member
          {latest.members.length === 1 ? "" : "s"}
        </div>
      ) : (
        <div className="muted">Sampling the cluster…</div>
      )}
      <table className="members" data-testid="members">
        <thead>
          <tr>
            <th>member</th>
            <th>role</th>
            <th>raft term</th>
            <th>raft index</th>
            <th>applied index</th>
            <th>lag</th>
            <th>db size</th>
            <th>version</th>
            <th>client URL</th>
          </tr>
        </thead>
        <tbody>
          {latest?.members.map((member) => (
            <tr key={member.id} data-member={member.name} data-role={member.role}>
              <td>
                <strong>{member.name || "(unnamed)"}</strong> <span className="muted mono">{member.id}</span>
              </td>
              <td>
                <span className={`badge role-${member.role}`} data-testid="member-role">
                  {member.role}
                </span>
              </td>
              <td>{member.raftTerm ?? "–"}</td>
              <td>{member.raftIndex ?? "–"}</td>
              <td>{member.appliedIndex ?? "–"}</td>
              <td data-testid="member-lag">{member.lag ?? "–"}</td>
              <td>{member.dbSize === null ? "–" : formatBytes(member.dbSize)}</td>
              <td>{member.version ?? "–"}</td>
              <td className="mono">{member.error ? <span className="error-text">{member.error}</span> : member.clientUrls.join(", ")}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>Lag behind the leader (entries), last two minutes</h3>
      <div className="chart" ref={chartBox} data-testid="lag-chart" />
    </div>
  );
}
