// A virtualized list on @tanstack/virtual-core: only the rows near the viewport are in the DOM, so a
// list of thousands of conversations, friends, zhaduis or messages stays fast. Rows may have any
// height (they are measured).
//
// `chat` makes it a conversation timeline: it opens at the newest row, follows new rows while the
// reader is at the end, and keeps the row being read in place when older rows are put in front
// (scrollback), which virtual-core does itself with anchorTo: 'end' and followOnAppend.
import {
  elementScroll,
  measureElement,
  observeElementOffset,
  observeElementRect,
  Virtualizer,
  type VirtualizerOptions,
} from '@tanstack/virtual-core';
import type { ComponentChildren } from 'preact';
import { useLayoutEffect, useReducer, useRef, useState } from 'preact/hooks';

interface Props<T> {
  items: readonly T[];
  keyOf: (item: T) => string;
  render: (item: T, index: number) => ComponentChildren;
  label: string;
  estimate?: number;
  class?: string;
  chat?: boolean;
  /** In chat mode: called when the reader is near the oldest row (to load earlier ones), and again
   * while they stay there each time `startKey` changes (a page arrived, or a load ended). */
  onNearStart?: () => void;
  startKey?: string | number;
}

export function VirtualList<T>({ items, keyOf, render, label, estimate = 64, class: className, chat = false, onNearStart, startKey }: Props<T>) {
  const scrollRef = useRef<HTMLDivElement>(null);
  const [, rerender] = useReducer((n: number) => n + 1, 0);
  const options: VirtualizerOptions<HTMLDivElement, Element> = {
    count: items.length,
    getScrollElement: () => scrollRef.current,
    estimateSize: () => estimate,
    getItemKey: (index) => keyOf(items[index]),
    scrollToFn: elementScroll,
    observeElementRect,
    observeElementOffset,
    measureElement,
    overscan: 8,
    onChange: () => rerender(undefined as never),
    ...(chat ? { anchorTo: 'end' as const, followOnAppend: true, scrollEndThreshold: 48 } : {}),
  };
  const [virtualizer] = useState(() => new Virtualizer(options));
  virtualizer.setOptions(options);
  useLayoutEffect(() => {
    const cleanup = virtualizer._didMount();
    if (chat) virtualizer.scrollToEnd();
    return cleanup;
  }, [virtualizer]);
  useLayoutEffect(() => {
    virtualizer._willUpdate();
  });
  const rows = virtualizer.getVirtualItems();
  const nearStart = chat && rows.length > 0 && rows[0].index === 0 && (virtualizer.scrollOffset ?? 0) < estimate * 2;
  // Ask once per (near the start, startKey): not on every render, but again after each page, so a
  // reader parked at the top keeps loading until the beginning or until the view moves away.
  const key = `${startKey ?? ''}/${items.length}`;
  const asked = useRef<string | null>(null);
  useLayoutEffect(() => {
    if (!nearStart) {
      asked.current = null;
      return;
    }
    if (asked.current !== key && onNearStart) {
      asked.current = key;
      onNearStart();
    }
  }, [nearStart, key]);

  const inner = (
    <div class="vlist-inner" style={{ height: `${virtualizer.getTotalSize()}px` }} role={chat ? 'list' : undefined}>
      {rows.map((row) => (
        <div
          key={row.key}
          data-index={row.index}
          ref={(el) => {
            if (el) virtualizer.measureElement(el);
          }}
          role="listitem"
          class="vlist-row"
          style={{ transform: `translateY(${row.start}px)` }}
        >
          {render(items[row.index], row.index)}
        </div>
      ))}
    </div>
  );
  return chat ? (
    // A conversation is a log (new rows are announced); its rows are a list inside it.
    <div ref={scrollRef} class={`vlist ${className ?? ''}`} role="log" aria-label={label} aria-live="polite" aria-relevant="additions">
      {inner}
    </div>
  ) : (
    <div ref={scrollRef} class={`vlist ${className ?? ''}`} role="list" aria-label={label}>
      {inner}
    </div>
  );
}
