// The web client in Debian's Chromium (playwright-core), against the real stack the pytest fixture
// started: three people in three browser contexts sign up with SMS codes, become friends through
// uploaded address books, chat live (receipts, typing, edits, redaction, cards), and a zhadui spreads
// to a friend of a friend. Screenshots of the main screens at phone and desktop width go to SHOTS.
//
// Settings: BASE_URL (the gateway), SMS_LOG (the file the dev SMS provider writes), SHOTS (a folder),
// CHROMIUM (default /usr/bin/chromium). Prints one JSON line per step; exits non-zero on failure.
import { mkdirSync, readFileSync, existsSync } from 'node:fs';
import { randomBytes, randomInt } from 'node:crypto';
import { crc32, deflateSync } from 'node:zlib';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE_URL;
const SMS_LOG = process.env.SMS_LOG;
const SHOTS = process.env.SHOTS ?? 'var/screenshots';
const WAIT = 30_000; // upper bound for an eventual thing to appear; each wait returns as soon as it does
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };

function step(name, extra = {}) {
  console.log(JSON.stringify({ step: name, ...extra }));
}

function smsCodes(msisdn) {
  if (!existsSync(SMS_LOG)) return [];
  const text = readFileSync(SMS_LOG, 'utf8');
  const re = /DEV-SMS \S+ to (\+\d+): Your Laiwang verification code is (\d{6})/g;
  return [...text.matchAll(re)].filter((m) => m[1] === msisdn).map((m) => m[2]);
}

async function waitForCode(msisdn) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const codes = smsCodes(msisdn);
    if (codes.length > 0) return codes[codes.length - 1];
    if (Date.now() > deadline) throw new Error(`no SMS code for ${msisdn} in ${SMS_LOG}`);
    await new Promise((r) => setTimeout(r, 100)); // polling a file: there is no event to wait on
  }
}

// Friends and zhadui screens learn of some changes only from their fallback poll (at most 20 s
// apart while the screen is open, web/src/lib/live.ts): those waits allow for one full interval.
const LIVE_WAIT = 60_000;
const see = (locator, timeout = WAIT) => locator.first().waitFor({ state: 'visible', timeout });
const gone = (locator) => locator.first().waitFor({ state: 'hidden', timeout: WAIT });

function person(name, locale) {
  const national = `139${String(randomInt(0, 99_999_999)).padStart(8, '0')}`;
  return { name: `${name}${randomBytes(3).toString('hex')}`, password: `pw-${randomBytes(8).toString('hex')}`, national, msisdn: `+86${national}`, locale };
}

/** Controls with no accessible name on the page: a button, link, field or select needs text, a
 * label, aria-label or aria-labelledby (title and placeholder do not count). */
async function unlabelled(page) {
  return page.evaluate(() => {
    const named = (el) => {
      if (el.getAttribute('aria-label')?.trim()) return true;
      const by = el.getAttribute('aria-labelledby');
      if (by && by.split(/\s+/).some((id) => document.getElementById(id)?.textContent.trim())) return true;
      if (el.labels && [...el.labels].some((l) => l.textContent.trim())) return true;
      if (['BUTTON', 'A'].includes(el.tagName) && el.textContent.trim()) return true;
      return false;
    };
    return [...document.querySelectorAll('button, a[href], input, select, textarea')]
      .filter((el) => !el.hidden && el.type !== 'hidden' && el.getClientRects().length > 0 && !named(el))
      .map((el) => el.outerHTML.slice(0, 120));
  });
}

async function shoot(page, name) {
  const missing = await unlabelled(page);
  if (missing.length > 0) throw new Error(`unlabelled controls on ${name}: ${missing.join(' | ')}`);
  const size = page.viewportSize();
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: join(SHOTS, `${name}-phone.png`) });
  await page.setViewportSize(DESKTOP);
  await page.screenshot({ path: join(SHOTS, `${name}-desktop.png`) });
  await page.setViewportSize(size);
}

async function signUp(page, p) {
  await page.goto(BASE);
  await page.getByRole('tab', { name: /Sign up|注册/ }).click();
  await page.locator('input[name=username]').fill(p.name);
  await page.locator('input[name=new-password]').fill(p.password);
  await page.locator('input[name=phone]').fill(p.national);
  await page.getByRole('button', { name: /Send code|发送验证码/ }).click();
  const code = await waitForCode(p.msisdn);
  await page.locator('input[name=code]').fill(code);
  await page.getByRole('button', { name: /Create account|创建账号/ }).click();
  await see(page.getByRole('heading', { name: /^(Chats|聊天)$/ }));
  p.userId = await page.evaluate(() => JSON.parse(localStorage.getItem('laiwang.session')).userId);
  p.token = await page.evaluate(() => JSON.parse(localStorage.getItem('laiwang.session')).accessToken);
  step('signed up', { user: p.userId });
}

async function tab(page, name) {
  await page.locator(`nav a.nav-${name}`).click();
}

async function uploadBook(page, file) {
  await tab(page, 'friends');
  await page.locator('input[name=book]').setInputFiles(file);
  await see(page.getByTestId('upload-result'));
}

function vcard(people) {
  return people.map((p) => `BEGIN:VCARD\r\nVERSION:3.0\r\nFN:${p.name}\r\nTEL;TYPE=CELL:+86 ${p.national.slice(0, 3)} ${p.national.slice(3)}\r\nEND:VCARD\r\n`).join('');
}

async function befriend(asker, askerPage, accepter, accepterPage) {
  await tab(askerPage, 'friends');
  const add = askerPage.getByRole('button', { name: new RegExp(`(Add friend|加好友) ${accepter.name}`) });
  await see(add, LIVE_WAIT); // the page refreshes its matches by itself
  await add.click();
  await tab(accepterPage, 'friends');
  const accept = accepterPage.getByRole('button', { name: new RegExp(`(Accept|接受) ${asker.name}`) });
  await see(accept, LIVE_WAIT);
  await accept.click();
  await see(accepterPage.getByRole('button', { name: new RegExp(`(Message|发消息) ${asker.name}`) }));
  await see(askerPage.getByRole('button', { name: new RegExp(`(Message|发消息) ${accepter.name}`) }), LIVE_WAIT);
  step('friends', { a: asker.userId, b: accepter.userId });
}

/** A real PNG of w x h pixels in one colour (the server decodes and re-encodes what it stores). */
function png(w, h, [r, g, b]) {
  const chunk = (type, data) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
    return Buffer.concat([head, data, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(w, 0);
  header.writeUInt32BE(h, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.alloc(w * 3).map((_, i) => [r, g, b][i % 3])]);
  const pixels = deflateSync(Buffer.concat(Array.from({ length: h }, () => row)));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', header), chunk('IDAT', pixels), chunk('IEND', Buffer.alloc(0))]);
}

/** Sends an event through the Client-Server API as `p` (for content the composer does not make). */
async function sendRaw(p, roomId, type, content) {
  const txn = randomBytes(8).toString('hex');
  const url = `${BASE}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/${type}/${txn}`;
  for (;;) {
    const answer = await fetch(url, { method: 'PUT', headers: { Authorization: `Bearer ${p.token}`, 'Content-Type': 'application/json' }, body: JSON.stringify(content) });
    if (answer.ok) return;
    const text = await answer.text();
    // The per-user send rate: wait as long as the server says, then send again (same txn id).
    if (answer.status === 429) await new Promise((r) => setTimeout(r, JSON.parse(text).retry_after_ms ?? 1000));
    else throw new Error(`send ${type}: ${answer.status} ${text}`);
  }
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const errors = [];
  const pages = [];
  const open = async (p) => {
    const context = await browser.newContext({ locale: p.locale, viewport: PHONE });
    const page = await context.newPage();
    pages.push([p.name, page]);
    page.on('pageerror', (e) => errors.push(`${p.name}: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && /Content.Security.Policy|Refused to/i.test(m.text())) errors.push(`${p.name}: CSP: ${m.text()}`);
    });
    return { context, page };
  };
  try {
    const alice = person('alice', 'en-US');
    const bob = person('bob', 'en-US');
    const carol = person('carol', 'zh-CN');
    const A = await open(alice);
    const B = await open(bob);
    const C = await open(carol);

    await A.page.goto(BASE);
    await see(A.page.getByRole('tab', { name: 'Sign up' }));
    await shoot(A.page, 'signup');
    await signUp(A.page, alice);

    // Address books: Alice a vCard with Bob before Bob has an account, Bob a CSV with Alice and
    // Carol (Alice's number in his book makes him visible to her: a suggestion, live), Carol a
    // vCard with Bob.
    await uploadBook(A.page, { name: 'contacts.vcf', mimeType: 'text/vcard', buffer: Buffer.from(vcard([bob])) });
    await see(A.page.getByTestId('upload-result').filter({ hasText: '0 people found' }));
    await signUp(B.page, bob);
    await signUp(C.page, carol);
    const csv = `Name,Mobile Phone\n${alice.name},+86 ${alice.national}\n"${carol.name}, C",${carol.national}\n`;
    await uploadBook(B.page, { name: 'contacts.csv', mimeType: 'text/csv', buffer: Buffer.from(csv) });
    await see(A.page.getByRole('button', { name: `Dismiss ${bob.name}` }), LIVE_WAIT);
    step('suggestion seen live after the contact signed up and uploaded');
    await uploadBook(C.page, { name: 'contacts.vcf', mimeType: 'text/vcard', buffer: Buffer.from(vcard([bob])) });
    step('address books uploaded');
    await befriend(alice, A.page, bob, B.page);
    await befriend(bob, B.page, carol, C.page);
    await shoot(B.page, 'friends');

    // Alice starts a direct chat with Bob; Bob sees it with an unread count, live.
    await A.page.getByRole('button', { name: `Message ${bob.name}` }).click();
    const composerA = A.page.getByRole('textbox', { name: 'Write a message' });
    await see(composerA);
    const roomId = decodeURIComponent(new URL(A.page.url()).hash.split('/')[2]);
    await composerA.fill('Hello Bob');
    await composerA.press('Enter');
    await see(A.page.locator('.event.own .text', { hasText: 'Hello Bob' }));
    await tab(B.page, 'chats');
    const row = B.page.locator(`a.room-row[data-room-id="${roomId}"]`);
    await see(row.getByText(/^Invitation$/));
    await row.click();
    await B.page.getByRole('button', { name: 'Join' }).click();
    await see(B.page.locator('.event .text', { hasText: 'Hello Bob' }));
    await see(A.page.getByTestId('read-receipt').filter({ hasText: `Read by ${bob.name}` }));
    step('receipt seen by the sender');

    await tab(B.page, 'chats');
    await composerA.fill('Are you coming tonight?');
    await composerA.press('Enter');
    await see(row.getByTestId('unread').filter({ hasText: '1' }));
    step('unread count live');
    await shoot(B.page, 'chats');
    await row.click();
    await gone(row.getByTestId('unread'));
    step('unread cleared after reading');

    // Typing, then a reply.
    const composerB = B.page.getByRole('textbox', { name: 'Write a message' });
    await composerB.fill('Yes, I');
    await see(A.page.getByTestId('typing').filter({ hasText: `${bob.name} is typing` }));
    step('typing seen on the other side');
    await composerB.fill('Yes, I will be there');
    await composerB.press('Enter');
    await see(A.page.locator('.event .text', { hasText: 'Yes, I will be there' }));

    // Edit and redact.
    await A.page.getByRole('button', { name: 'Edit: Hello Bob' }).click();
    // As a person would: start typing once the composer shows the message being edited.
    await see(A.page.getByText('Editing a message'));
    await A.page.waitForFunction(() => document.querySelector('#composer-input')?.value === 'Hello Bob');
    await composerA.fill('Hello Bob!');
    await composerA.press('Enter');
    await see(B.page.locator('.event', { hasText: 'Hello Bob!' }).getByText('(edited)'));
    await A.page.getByRole('button', { name: 'Delete: Are you coming tonight?' }).click();
    await see(B.page.locator('.event.redacted', { hasText: 'Message deleted' }));
    await gone(B.page.getByText('Are you coming tonight?'));
    step('edit and redaction seen');

    // Cards: a link shared from the composer, a product card and a hostile card through the API.
    await A.page.getByRole('button', { name: 'Share a link' }).click();
    await A.page.locator('form.attach input[name=url]').fill('https://example.com/laiwang');
    await A.page.locator('form.attach input[name=title]').fill('Laiwang design notes');
    await A.page.locator('form.attach input[name=extra]').fill('How zhadui spreads');
    await A.page.locator('form.attach').getByRole('button', { name: 'Send' }).click();
    const shareCard = B.page.locator('article.card-share', { hasText: 'Laiwang design notes' });
    await see(shareCard);
    const href = await shareCard.getByRole('link', { name: 'Laiwang design notes' }).getAttribute('href');
    if (href !== 'https://example.com/laiwang') throw new Error(`share card links to ${href}`);
    await sendRaw(alice, roomId, 'cn.laiwang.app_card', {
      app_id: 'shopping',
      card: { type: 'product', title: 'Longjing tea, 250 g', price_fen: 12900, url: 'https://example.com/tea' },
      body: 'Longjing tea, 250 g: 129.00 yuan https://example.com/tea',
    });
    await see(B.page.locator('article.card-product', { hasText: '¥129.00' }));
    const hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>';
    await sendRaw(alice, roomId, 'cn.laiwang.share_card', { url: 'https://example.com/x', title: hostile, body: hostile });
    await sendRaw(alice, roomId, 'cn.laiwang.music_card', { url: 'https://example.com/song.mp3', title: 'Moonlight', artist: 'Teresa Teng', duration_ms: 215000, body: 'Moonlight - Teresa Teng' });
    await see(B.page.locator('article.card-music', { hasText: 'Moonlight' }));
    await see(B.page.locator('article.card-share .card-title', { hasText: '<script>' }));
    if (await B.page.evaluate(() => window.__pwned !== undefined)) throw new Error('card markup ran script');
    if ((await B.page.locator('.timeline script, .timeline img[src=x]').count()) !== 0) throw new Error('card markup became DOM');
    step('cards rendered as cards; markup stayed text');

    // A picture from the composer: uploaded, then shown on the other side through authenticated media.
    await A.page.locator('input[name=picture]').setInputFiles({ name: 'lake.png', mimeType: 'image/png', buffer: png(320, 200, [40, 120, 200]) });
    const picture = B.page.locator('.event [data-testid=picture] img[alt="lake.png"]');
    await see(picture);
    const shown = await picture.evaluate((img) => ({ src: img.src.slice(0, 5), w: img.naturalWidth, h: img.naturalHeight }));
    if (shown.src !== 'blob:' || shown.w !== 320 || shown.h !== 200) throw new Error(`picture shown as ${JSON.stringify(shown)}`);
    step('picture shown through authenticated media');
    await shoot(B.page, 'conversation');

    // A long conversation: only rows near the viewport are in the DOM; scrolling up loads earlier ones.
    const LONG = 150;
    for (let i = 1; i <= LONG; i++) await sendRaw(alice, roomId, 'm.room.message', { msgtype: 'm.text', body: `Line ${String(i).padStart(3, '0')}` });
    await see(B.page.locator('.event .text', { hasText: `Line ${LONG}` }));
    const timeline = B.page.getByRole('log');
    for (let round = 0; (await B.page.locator('.event .text', { hasText: /^Line 001$/ }).count()) === 0; round++) {
      if (round > 20) throw new Error('scrollback never reached the first line');
      const before = await B.page.evaluate(() => document.querySelector('.timeline .vlist-inner').style.height);
      await timeline.evaluate((el) => el.scrollTo(0, 0));
      await B.page.waitForFunction((h) => document.querySelector('.timeline .vlist-inner').style.height !== h || document.querySelector('.timeline-start p'), before, { timeout: WAIT });
    }
    const inDom = await B.page.locator('.timeline .event').count();
    if (inDom >= LONG / 2) throw new Error(`${inDom} of ${LONG}+ messages are in the DOM: the timeline is not virtualized`);
    step('long timeline virtualized; scrollback by scrolling up', { inDom });

    // Zhadui: Alice starts one; Bob (her friend) sees and joins; then Carol (Bob's friend) sees it with Bob in it.
    await tab(A.page, 'zhadui');
    await A.page.getByRole('button', { name: 'Start a zhadui' }).click();
    await A.page.locator('#start-zhadui input[name=title]').fill('Hotpot on Friday?');
    await A.page.locator('#start-zhadui textarea[name=body]').fill('Chongqing style, near the office.');
    await A.page.locator('#start-zhadui').getByRole('button', { name: 'Start' }).click();
    await see(A.page.locator('.zhadui-item', { hasText: 'Hotpot on Friday?' }));
    await tab(C.page, 'zhadui');
    await tab(B.page, 'zhadui');
    const itemB = B.page.locator('.zhadui-item', { hasText: 'Hotpot on Friday?' });
    await see(itemB, LIVE_WAIT);
    const carolBefore = await C.page.locator('.zhadui-item', { hasText: 'Hotpot on Friday?' }).count();
    if (carolBefore !== 0) throw new Error('a friend of a friend saw the zhadui before the friend joined');
    await itemB.getByRole('button', { name: 'Join: Hotpot on Friday?' }).click();
    await see(itemB.getByRole('button', { name: 'Discussion: Hotpot on Friday?' }));
    const itemC = C.page.locator('.zhadui-item', { hasText: 'Hotpot on Friday?' });
    await see(itemC, LIVE_WAIT);
    await see(itemC.getByTestId('social-proof').filter({ hasText: `${bob.name} 在里面` }));
    step('friend of a friend sees the zhadui after the friend joined, with social proof');
    await shoot(C.page, 'zhadui');
    await itemC.getByRole('button', { name: '加入: Hotpot on Friday?' }).click();
    await itemC.getByRole('button', { name: '讨论: Hotpot on Friday?' }).click();
    const composerC = C.page.getByRole('textbox', { name: '输入消息' });
    await see(composerC);
    await composerC.fill('我也来！');
    await composerC.press('Enter');
    await itemB.getByRole('button', { name: 'Discussion: Hotpot on Friday?' }).click();
    await see(B.page.locator('.event .text', { hasText: '我也来！' }));
    step('discussion works');
    await tab(B.page, 'zhadui');
    await B.page.locator('.zhadui-item', { hasText: 'Hotpot on Friday?' }).getByRole('button', { name: 'Leave: Hotpot on Friday?' }).click();
    await see(B.page.locator('.zhadui-item', { hasText: 'Hotpot on Friday?' }).getByRole('button', { name: 'Join: Hotpot on Friday?' }));
    step('left the zhadui');

    // Group among friends: Bob creates one with Alice and Carol.
    await tab(B.page, 'chats');
    await B.page.getByRole('button', { name: 'New group' }).click();
    await B.page.locator('input[name=group-name]').fill('Weekend plans');
    await B.page.getByRole('checkbox', { name: alice.name }).check();
    await B.page.getByRole('checkbox', { name: carol.name }).check();
    await B.page.getByRole('button', { name: 'Create' }).click();
    await see(B.page.getByRole('heading', { name: 'Weekend plans' }));
    await tab(C.page, 'chats');
    await see(C.page.locator('a.room-row', { hasText: 'Weekend plans' }));
    step('group created among friends');

    // Lost connection: a banner, then it reconnects by itself.
    await A.context.setOffline(true);
    await see(A.page.getByTestId('offline-banner'));
    await A.context.setOffline(false);
    await gone(A.page.getByTestId('offline-banner'));
    step('offline banner and reconnect');

    // Apps: Alice registers one (its secrets shown once), a refused setting answers in words, suspend.
    await tab(A.page, 'apps');
    await A.page.getByRole('button', { name: 'Register an app' }).click();
    await A.page.locator('input[name=app-name]').fill('Hotpot Finder');
    await A.page.locator('input[name=redirect-uri]').fill('https://partner.example/oauth/callback');
    await A.page.locator('input[name=webhook-url]').fill('https://169.254.169.254/hook');
    await A.page.getByRole('checkbox', { name: /cards:write/ }).check();
    await A.page.getByRole('button', { name: 'Register', exact: true }).click();
    await see(A.page.locator('#register-app').getByRole('alert').filter({ hasText: 'Some of what you entered is not valid.' }));
    await A.page.locator('input[name=webhook-url]').fill('https://partner.example/webhooks/laiwang');
    await A.page.getByRole('button', { name: 'Register', exact: true }).click();
    const secrets = A.page.getByTestId('app-secrets');
    await see(secrets.getByText(/^lwcs_/));
    await see(secrets.getByText(/^whsec_/));
    await shoot(A.page, 'apps');
    await secrets.getByRole('button', { name: 'I have saved them' }).click();
    await gone(secrets);
    const appRow = A.page.locator('.app-item', { hasText: 'Hotpot Finder' });
    await see(appRow.getByText('Active'));
    await see(appRow.getByTestId('webhook-health').getByText('Webhook: delivering'));
    await appRow.getByRole('button', { name: 'Suspend: Hotpot Finder' }).click();
    await see(appRow.getByText('Suspended'));
    step('app registered, secrets shown once, suspended');

    // Devices, sign out, sign in again with the phone number.
    await tab(A.page, 'me');
    await see(A.page.locator('#devices li', { hasText: 'this device' }));
    await shoot(A.page, 'me');
    await A.page.getByRole('button', { name: 'Sign out' }).click();
    await A.page.getByRole('tab', { name: 'Sign in' }).click();
    await A.page.locator('input[name=user]').fill(alice.national);
    await A.page.locator('input[name=password]').fill('wrong password');
    await A.page.getByRole('button', { name: 'Sign in' }).click();
    await see(A.page.getByRole('alert').filter({ hasText: 'Wrong user name or password.' }));
    await A.page.locator('input[name=password]').fill(alice.password);
    await A.page.getByRole('button', { name: 'Sign in' }).click();
    await see(A.page.getByRole('heading', { name: 'Chats' }));
    await see(A.page.locator('a.room-row', { hasText: 'Weekend plans' }));
    step('signed out and in again by phone number');

    // Blocks: Carol blocks Bob (he moves to her blocked list), then unblocks him.
    await tab(C.page, 'friends');
    await C.page.getByRole('button', { name: `拉黑 ${bob.name}` }).click();
    const unblock = C.page.getByRole('button', { name: `取消拉黑 ${bob.name}` });
    await see(unblock);
    await gone(C.page.getByRole('button', { name: `发消息 ${bob.name}` }));
    await unblock.click();
    await gone(unblock);
    step('blocked and unblocked');

    if (errors.length > 0) throw new Error(`page errors: ${errors.join('; ')}`);
    console.log(JSON.stringify({ ok: true, screenshots: SHOTS }));
  } catch (error) {
    for (const [name, page] of pages) await page.screenshot({ path: join(SHOTS, `failure-${name}.png`) }).catch(() => undefined);
    throw error;
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.log(JSON.stringify({ ok: false, error: String(error?.stack ?? error) }));
  process.exit(1);
});
