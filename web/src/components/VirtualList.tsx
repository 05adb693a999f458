// A virtualized list on @tanstack/virtual-core: only the rows near the viewport are in the DOM, so a
// list of thousands of conversations, friends or zhaduis stays fast. Rows may have any height
// (they are measured).
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
}

export function VirtualList<T>({ items, keyOf, render, label, estimate = 64, class: className }: Props<T>) {
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
  };
  const [virtualizer] = useState(() => new Virtualizer(options));
  virtualizer.setOptions(options);
  useLayoutEffect(() => virtualizer._didMount(), [virtualizer]);
  useLayoutEffect(() => {
    virtualizer._willUpdate();
  });
  return (
    <div ref={scrollRef} class={`vlist ${className ?? ''}`} role="list" aria-label={label}>
      <div class="vlist-inner" style={{ height: `${virtualizer.getTotalSize()}px` }}>
        {virtualizer.getVirtualItems().map((row) => (
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
    </div>
  );
}
