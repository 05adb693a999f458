import { describe, expect, it } from 'vitest';
import { numbersFromCsv, numbersFromFile, numbersFromVCard, parseCsv } from '../src/lib/book';

describe('address book files', () => {
  it('reads TEL lines of vCard 3.0 and 4.0, folded lines and item groups', () => {
    const vcf = [
      'BEGIN:VCARD', 'VERSION:3.0', 'FN:Wang Wei', 'TEL;TYPE=CELL:+86 138 0013 8000', 'END:VCARD',
      'BEGIN:VCARD', 'VERSION:4.0', 'FN:Li Na', 'TEL;VALUE=uri;TYPE="voice,cell":tel:+86-139-0000-1111', 'item1.TEL:1370000', ' 2222', 'END:VCARD',
    ].join('\r\n');
    expect(numbersFromVCard(vcf)).toEqual(['+8613800138000', '+8613900001111', '13700002222']);
  });

  it('reads phone columns of a CSV with a header, honouring quotes', () => {
    const csv = 'Name,Mobile Phone,Note\n"Wang, Wei",138 0013 8000,"says ""hi"""\nLi Na,+86 139-0000-1111,\n';
    expect(numbersFromCsv(csv)).toEqual(['13800138000', '+8613900001111']);
    expect(parseCsv(csv)[1]).toEqual(['Wang, Wei', '138 0013 8000', 'says "hi"']);
  });

  it('without a phone header takes only cells that look like numbers', () => {
    expect(numbersFromCsv('Wang Wei;13800138000;2024\nLi;not a number;+8613900001111')).toEqual(['13800138000', '+8613900001111']);
  });

  it('picks the format from the name or the content, removes duplicates', () => {
    expect(numbersFromFile('x.txt', 'BEGIN:VCARD\nTEL:13800138000\nTEL:13800138000\nEND:VCARD')).toEqual(['13800138000']);
    expect(numbersFromFile('book.csv', 'phone\n13800138000\n')).toEqual(['13800138000']);
    expect(numbersFromFile('empty.csv', '')).toEqual([]);
  });
});
