import type { Room } from 'matrix-js-sdk';
import { localpart } from './present';

/** The SDK names an unnamed direct chat after the other person's id; show their localpart instead. */
export function roomName(room: Room): string {
  return room.name.startsWith('@') ? localpart(room.name) : room.name;
}
