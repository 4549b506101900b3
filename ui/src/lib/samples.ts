// The cluster view's lag history: a sliding window of samples turned into the column
// arrays uPlot draws.

import { ClusterSample } from "./api";

/** Two minutes of samples at one a second. */
export const WINDOW = 120;

export interface LagSeries {
  /** Member ids in a stable order, one line per member. */
  memberIds: string[];
  names: string[];
  /** [times in seconds, then one lag column per member; null where a member had none]. */
  columns: [number[], ...(number | null)[][]];
}

export function lagSeries(samples: readonly ClusterSample[]): LagSeries {
  const window = samples.slice(-WINDOW);
  const names = new Map<string, string>();
  for (const sample of window) {
    for (const member of sample.members) names.set(member.id, member.name || member.id);
  }
  const memberIds = [...names.keys()].sort();
  const times = window.map((sample) => sample.takenAt / 1000);
  const columns = memberIds.map((id) =>
    window.map((sample) => sample.members.find((member) => member.id === id)?.lag ?? null),
  );
  return { memberIds, names: memberIds.map((id) => names.get(id) ?? id), columns: [times, ...columns] };
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 && unit > 0 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}
