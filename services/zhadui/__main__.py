from services.zhadui.main import main

main()
