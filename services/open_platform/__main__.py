from services.open_platform.main import main

main()
