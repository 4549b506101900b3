import { describe, expect, it } from "vitest";
import { ClusterSample, MemberSample } from "../src/lib/api";
import { formatBytes, lagSeries, WINDOW } from "../src/lib/samples";

function member(id: string, lag: number | null): MemberSample {
  return {
    id,
    name: `node-${id}`,
    clientUrls: [],
    role: lag === 0 ? "leader" : "follower",
    raftTerm: 2,
    raftIndex: 10,
    appliedIndex: 10,
    dbSize: 1,
    version: "3.5.13",
    lag,
    error: null,
  };
}

const sample = (t: number, members: MemberSample[]): ClusterSample => ({
  takenAt: t * 1000,
  health: "healthy",
  leaderId: "a",
  members,
});

describe("lag series", () => {
  it("gives one column per member with gaps where a member was missing", () => {
    const series = lagSeries([
      sample(1, [member("b", 3), member("a", 0)]),
      sample(2, [member("a", 0)]),
      sample(3, [member("a", 0), member("b", 1), member("c", 9)]),
    ]);
    expect(series.memberIds).toEqual(["a", "b", "c"]);
    expect(series.names).toEqual(["node-a", "node-b", "node-c"]);
    expect(series.columns).toEqual([
      [1, 2, 3],
      [0, 0, 0],
      [3, null, 1],
      [null, null, 9],
    ]);
  });

  it("keeps only the last window of samples", () => {
    const many = Array.from({ length: WINDOW + 30 }, (_, i) => sample(i, [member("a", 0)]));
    expect(lagSeries(many).columns[0]).toHaveLength(WINDOW);
    expect(lagSeries(many).columns[0][0]).toBe(30);
  });

  it("formats database sizes in binary units", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(20480)).toBe("20 KiB");
    expect(formatBytes(1536 * 1024)).toBe("1.5 MiB");
  });
});
