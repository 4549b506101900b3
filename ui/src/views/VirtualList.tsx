import { ReactNode, useLayoutEffect, useRef, useState } from "react";
import { windowOf } from "../lib/tree";

interface Props {
  rowCount: number;
  rowHeight: number;
  renderRow: (index: number) => ReactNode;
  testId?: string;
}

/** A list that renders only the rows in view, so 100,000 rows scroll like 30. */
export function VirtualList({ rowCount, rowHeight, renderRow, testId }: Props) {
  const viewport = useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(600);

  useLayoutEffect(() => {
    const element = viewport.current;
    if (!element) return;
    const observer = new ResizeObserver(() => setHeight(element.clientHeight));
    observer.observe(element);
    setHeight(element.clientHeight);
    return () => observer.disconnect();
  }, []);

  const { start, end } = windowOf(rowCount, rowHeight, scrollTop, height);
  const rows: ReactNode[] = [];
  for (let index = start; index < end; index++) {
    rows.push(
      <div key={index} className="virtual-row" style={{ top: index * rowHeight, height: rowHeight }}>
        {renderRow(index)}
      </div>,
    );
  }
  return (
    <div
      ref={viewport}
      className="virtual-viewport"
      data-testid={testId}
      data-row-count={rowCount}
      onScroll={(event) => setScrollTop(event.currentTarget.scrollTop)}
    >
      <div className="virtual-spacer" style={{ height: rowCount * rowHeight }}>
        {rows}
      </div>
    </div>
  );
}
