// Browsers have no address book: people export theirs as a vCard (.vcf) or CSV file. This pulls the
// phone numbers out of either; the server normalises them (region CN) and reports invalid ones.

const MAX_NUMBERS = 10_000; // the upload endpoint's limit

/** Phone numbers from vCard 2.1/3.0/4.0 text (TEL properties, with or without parameters). */
export function numbersFromVCard(text: string): string[] {
  // Unfold continuation lines (RFC 6350 section 3.2) before reading properties.
  const unfolded = text.replace(/\r\n/g, '\n').replace(/\n[ \t]/g, '');
  const found: string[] = [];
  for (const line of unfolded.split('\n')) {
    const match = /^(?:[\w-]+\.)?TEL(?:[;:])(.*)$/i.exec(line.trim());
    if (!match) continue;
    const value = match[1].includes(':') ? match[1].slice(match[1].lastIndexOf(':') + 1) : match[1];
    const number = cleanNumber(value.replace(/^tel:/i, ''));
    if (number) found.push(number);
  }
  return unique(found);
}

/** Phone numbers from CSV: every column whose header mentions phone/mobile/tel/电话/手机, or, without
 * such a header, every cell that looks like a phone number. Quoted cells are honoured. */
export function numbersFromCsv(text: string): string[] {
  const rows = parseCsv(text);
  if (rows.length === 0) return [];
  const header = rows[0].map((cell) => cell.toLowerCase());
  const columns = header.flatMap((cell, i) => (/phone|mobile|tel|电话|手机/.test(cell) ? [i] : []));
  const body = columns.length > 0 ? rows.slice(1) : rows;
  const found: string[] = [];
  for (const row of body) {
    const cells = columns.length > 0 ? columns.map((i) => row[i] ?? '') : row;
    for (const cell of cells) {
      const number = cleanNumber(cell);
      if (number && (columns.length > 0 || looksLikePhone(cell))) found.push(number);
    }
  }
  return unique(found);
}

export function numbersFromFile(name: string, text: string): string[] {
  const isVCard = /\.vcf$/i.test(name) || /^\s*BEGIN:VCARD/i.test(text);
  return (isVCard ? numbersFromVCard(text) : numbersFromCsv(text)).slice(0, MAX_NUMBERS);
}

function cleanNumber(raw: string): string | null {
  const trimmed = raw.trim();
  const digits = trimmed.replace(/[\s().-]/g, '');
  if (!/^\+?\d{5,20}$/.test(digits)) return null;
  return digits;
}

function looksLikePhone(cell: string): boolean {
  return /^\s*\+?[\d\s().-]{7,24}\s*$/.test(cell);
}

function unique(values: string[]): string[] {
  return [...new Set(values)];
}

export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let quoted = false;
  const source = text.replace(/^\uFEFF/, '');
  for (let i = 0; i < source.length; i++) {
    const ch = source[i];
    if (quoted) {
      if (ch === '"' && source[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',' || ch === ';' || ch === '\t') {
      row.push(cell);
      cell = '';
    } else if (ch === '\n' || ch === '\r') {
      if (ch === '\r' && source[i + 1] === '\n') i++;
      row.push(cell);
      if (row.some((c) => c.trim() !== '')) rows.push(row);
      row = [];
      cell = '';
    } else cell += ch;
  }
  row.push(cell);
  if (row.some((c) => c.trim() !== '')) rows.push(row);
  return rows;
}
