import { render } from 'preact';
import { App } from './App';
import { language } from './lib/i18n';

document.documentElement.lang = language() === 'zh' ? 'zh-CN' : 'en';
render(<App />, document.getElementById('app') as HTMLElement);
