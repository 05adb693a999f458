import { KnownMembership, type MatrixClient } from 'matrix-js-sdk';

/** A joined (or invited) two-person room with `userId`, or a new direct chat with them. */
export async function directRoom(client: MatrixClient, userId: string): Promise<string> {
  const me = client.getUserId();
  for (const room of client.getRooms()) {
    if (room.getMyMembership() !== KnownMembership.Join) continue;
    const members = room.getMembers().filter((m) => m.membership === 'join' || m.membership === 'invite');
    if (members.length === 2 && members.some((m) => m.userId === userId) && members.some((m) => m.userId === me)) {
      return room.roomId;
    }
  }
  const { room_id } = await client.createRoom({ is_direct: true, invite: [userId], preset: 'trusted_private_chat' as never });
  return room_id;
}
